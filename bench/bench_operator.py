"""Reconcile 100 FineTuneJobs created at once, on the real control plane (tests/controlplane).

Measures: seconds until all 100 child PyTorchJobs exist (goal < 10 s), duplicate children
(goal 0), and API requests per job as the API server's audit log counts them (the operator
runs as user graft-admin, the bench creates as graft-sdk). Baseline in the same run: the same
100 ConfigMap + PyTorchJob creates done directly with the kubernetes client (the floor an
operator cannot beat), so the figures are ratios against it.

    .venv/bin/python bench/bench_operator.py [--jobs 100]
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

from graft.render import render  # noqa: E402
from graft.spec import parse_spec  # noqa: E402

CRDS_DIR = REPO.parent / "shared" / "crds"
EXAMPLE = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())


def document(name: str, namespace: str) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(EXAMPLE))
    doc["metadata"] = {"name": name, "namespace": namespace}
    return doc


def children(custom: client.CustomObjectsApi, namespace: str) -> list[dict]:
    return custom.list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs")["items"]


def floor(custom, core, plane, jobs: int) -> tuple[float, int]:
    """The same children created directly: seconds and requests."""
    namespace = "floor"
    plane.kubectl("create", "namespace", namespace)
    objects = [render(parse_spec({**EXAMPLE, "metadata": {"name": f"job-{i}", "namespace": namespace}}),
                      "pytorchjob") for i in range(jobs)]
    before, start = len(plane.requests_by("graft-sdk")), time.perf_counter()

    def create(pair):
        configmap, child = pair
        core.create_namespaced_config_map(namespace, configmap)
        custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", child)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, objects))
    return time.perf_counter() - start, len(plane.requests_by("graft-sdk")) - before


def operator_run(custom, plane, jobs: int) -> tuple[float, int, int]:
    """Seconds until every child exists, operator requests until it went quiet, duplicates."""
    namespace = "bench"
    plane.kubectl("create", "namespace", namespace)
    docs = [document(f"job-{i}", namespace) for i in range(jobs)]
    operator_requests = lambda: len(plane.requests_by("graft-admin"))  # noqa: E731
    before, start = operator_requests(), time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda d: custom.create_namespaced_custom_object(
            "graft.dev", "v1alpha1", namespace, "finetunejobs", d), docs))
    wait_for(lambda: len(children(custom, namespace)) >= jobs, timeout=120, interval=0.5)
    elapsed = time.perf_counter() - start
    settled = operator_requests()
    while True:  # let status writes and events finish: quiet for 2 s
        time.sleep(2)
        now = operator_requests()
        if now == settled:
            break
        settled = now
    names = [c["metadata"]["name"] for c in children(custom, namespace)]
    return elapsed, settled - before, len(names) - len(set(names)) + (len(names) - jobs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    with temporary_control_plane(CRDS_DIR) as (plane, tmp):
        sdk_config = plane.user_kubeconfig("graft-sdk", "default", tmp / "sdk.kubeconfig")
        api = config.new_client_from_config(str(sdk_config))
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        floor_s, floor_requests = floor(custom, core, plane, args.jobs)
        with OperatorProcess(plane.kubeconfig, tmp / "operator.log"):
            op_s, op_requests, duplicates = operator_run(custom, plane, args.jobs)
    print(f"jobs: {args.jobs} (real kube-apiserver; requests counted by its audit log)")
    print(f"direct creates (floor): {floor_s:.2f} s, {floor_requests / args.jobs:.1f} requests/job")
    print(f"operator reconcile:     {op_s:.2f} s to all children (goal < 10 s), "
          f"{op_requests / args.jobs:.1f} operator requests/job incl. watches, status + events, duplicates {duplicates} (goal 0)")
    print(f"ratio operator/floor:   time {op_s / floor_s:.1f}x, requests {op_requests / floor_requests:.1f}x")


if __name__ == "__main__":
    main()
