"""1,000 FineTuneJobs applied at once to the real control plane (tests/controlplane), the
operator a real process: seconds until the last child PyTorchJob exists, duplicates (goal 0),
the operator's API requests per job as the API server's audit log counts them (it runs as
graft-admin, the jobs are created as graft-sdk), and the operator's peak memory (VmHWM).

    .venv/bin/python bench/bench_operator_load.py [--jobs 1000] [--clients 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from controlplane.cluster import temporary_control_plane  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402
from tools import wait_for  # noqa: E402

CRDS_DIR = REPO.parent / "shared" / "crds"
EXAMPLE = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with temporary_control_plane(CRDS_DIR) as (plane, tmp):
        sdk_config = plane.user_kubeconfig("graft-sdk", "default", tmp / "sdk.kubeconfig")
        api = config.new_client_from_config(str(sdk_config))
        custom = client.CustomObjectsApi(api)
        plane.kubectl("create", "namespace", "load")
        docs = []
        for i in range(args.jobs):
            doc = yaml.safe_load(yaml.safe_dump(EXAMPLE))
            doc["metadata"] = {"name": f"job-{i}", "namespace": "load"}
            docs.append(doc)
        with OperatorProcess(plane.kubeconfig, tmp / "operator.log") as op:
            before, start = len(plane.requests_by("graft-admin")), time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda d: custom.create_namespaced_custom_object(
                    "graft.dev", "v1alpha1", "load", "finetunejobs", d), docs))
            applied = time.perf_counter() - start

            def kids():
                return custom.list_namespaced_custom_object("kubeflow.org", "v1", "load", "pytorchjobs")["items"]
            wait_for(lambda: len(kids()) >= args.jobs, timeout=1800, interval=1)
            last_child = time.perf_counter() - start

            def settled():
                jobs = custom.list_namespaced_custom_object("graft.dev", "v1alpha1", "load", "finetunejobs")["items"]
                return all((j.get("status") or {}).get("child") for j in jobs)
            wait_for(settled, timeout=1800, interval=1)
            all_status = time.perf_counter() - start
            quiet = len(plane.requests_by("graft-admin"))
            while True:
                time.sleep(3)
                now = len(plane.requests_by("graft-admin"))
                if now == quiet:
                    break
                quiet = now
            requests = quiet - before
            peak = peak_rss_mib(op.proc.pid)
            names = [c["metadata"]["name"] for c in kids()]
    print(f"jobs: {args.jobs} applied by {args.clients} clients in {applied:.1f} s (real kube-apiserver)")
    print(f"time to the last child: {last_child:.1f} s; every status written: {all_status:.1f} s")
    print(f"children: {len(names)}, duplicates: {len(names) - len(set(names))}")
    print(f"operator API requests: {requests} = {requests / args.jobs:.1f}/job (audit log, incl. watches, status, events)")
    print(f"operator peak memory (VmHWM): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
