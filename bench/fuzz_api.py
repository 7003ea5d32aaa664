"""1,000 generated FineTuneJob bodies applied to the real API server with the operator running
(tests/kubernetes_faults/api_fuzz.py): how many the server refused (CRD schema, CEL), how many
the operator marked Failed naming the field (no child), how many got a child; the operator
must not crash.

    .venv/bin/python bench/fuzz_api.py [--examples 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "kubernetes_faults")]

from api_fuzz import apply, documents, undecided, verdicts  # noqa: E402
from controlplane.cluster import temporary_control_plane  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402
from tools import wait_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    with temporary_control_plane(REPO.parent / "shared" / "crds") as (plane, tmp):
        api = config.new_client_from_config(str(plane.kubeconfig))
        admin = SimpleNamespace(custom=client.CustomObjectsApi(api), core=client.CoreV1Api(api))
        plane.kubectl("create", "namespace", "fuzz")
        stored, refused = [], []
        with OperatorProcess(plane.kubeconfig, tmp / "operator.log") as op:
            started = time.perf_counter()

            @settings(max_examples=args.examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(document=documents())
            def send(document):
                name = apply(admin, "fuzz", document, len(stored) + len(refused))
                (stored if name else refused).append(name)

            send()
            try:
                outcome = wait_for(lambda: (lambda v: v if v is not None and len(v) == len(stored) else None)(
                    verdicts(admin, "fuzz")), timeout=900, interval=2, explain=lambda: undecided(admin, "fuzz"))
            except AssertionError:
                print(op.log_path.read_text()[-6000:])
                raise
            seconds = time.perf_counter() - started
            alive = op.proc.poll() is None
    failed = sum(v == "failed" for v in outcome.values())
    print(f"{len(stored) + len(refused)} bodies in {seconds:.0f} s: {len(refused)} refused by the API server, "
          f"{failed} marked Failed by the operator naming the field (no child), {len(outcome) - failed} given a "
          f"child; operator alive: {alive}")


if __name__ == "__main__":
    main()
