"""`python -m graft_trainer SPEC.yaml [--output DIR]`: one process of a (possibly distributed)
run. The launcher (torchrun, `graft run`, the Kubeflow operators) sets the distributed env."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from graft.spec import SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graft_trainer", description=__doc__)
    parser.add_argument("spec", help="FineTuneJob YAML file")
    parser.add_argument("--output", help="override spec.output.dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths, never the Hub
    try:
        job = load_spec(args.spec)
        if args.output:
            job.spec.output.dir = args.output
        from graft_trainer.loop import fit  # torch-heavy: only once the spec is known to be valid

        fit(job)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
