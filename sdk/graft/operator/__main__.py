"""`python -m graft.operator [--namespace NS] [--standalone] [--peering NAME] [--verbose]`."""

import argparse

from graft.operator import PEERING_NAME, run

parser = argparse.ArgumentParser(prog="python -m graft.operator", description=run.__doc__)
parser.add_argument("--namespace", help="watch only this namespace (default: the whole cluster)")
parser.add_argument("--standalone", action="store_true",
                    help="no peering: for development, when only one instance can run")
parser.add_argument("--peering", default=PEERING_NAME, help="kopf peering object name")
parser.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
parser.add_argument("--verbose", action="store_true")
args = parser.parse_args()
run(args.namespace, standalone=args.standalone, peering_name=args.peering,
    liveness_endpoint=args.liveness, verbose=args.verbose)
