"""API calls made while waiting for a job: `graft wait` (watch) vs a naive polling wait, on the
real control plane (tests/controlplane).

A thread plays the training operator, writing the PyTorchJob's status through its status
subresource every 0.5 s (Created, Running, progress) and marking it Succeeded after
--job-seconds. Both waits run alternately on the same scenario, each as user graft-sdk; the
API server's audit log counts every request the waiter made (get = polling, list, watch), and
the latency is from the Succeeded write to the waiter returning.

    .venv/bin/python bench/bench_wait.py [--job-seconds 6] [--interval 2] [--rounds 3]

The baseline polls `get` every --interval seconds (the Kubeflow SDK's wait_for_job_status
default is 2 s), which is what a client without watch does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from controlplane.cluster import temporary_control_plane  # noqa: E402
from kubernetes import client, config  # noqa: E402

from graft.api import Client  # noqa: E402

JOB = {
    "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench"},
    "spec": {"task": "image-classification", "backbone": {"name": "timm/resnet18"},
             "data": {"format": "imagefolder", "train": "/data/train"},
             "strategy": {"phases": [{"epochs": 1, "lr": 0.001}]}},
}


def play_operator(custom, namespace: str, job_seconds: float, finished: dict) -> None:
    """Status churn as the training operator writes it, then Succeeded."""
    start = time.monotonic()
    conditions = [{"type": "Created", "status": "True"}]
    step = 0
    while time.monotonic() - start < job_seconds:
        time.sleep(0.5)
        step += 1
        running = {"type": "Running", "status": "True", "message": f"step {step}"}
        custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "bench",
                                                     {"status": {"conditions": conditions + [running]}})
    done = {"type": "Succeeded", "status": "True", "message": "PyTorchJob bench is successfully completed."}
    finished["at"] = time.monotonic()
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "bench",
                                                 {"status": {"conditions": conditions + [done]}})


def polling_wait(custom, namespace: str, interval: float) -> None:
    while True:
        obj = custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "bench")
        types = {c["type"] for c in (obj.get("status") or {}).get("conditions", []) if c["status"] == "True"}
        if types & {"Succeeded", "Failed"}:
            return
        time.sleep(interval)


def one_round(plane, kind: str, index: int, args, workdir: Path) -> dict:
    namespace = f"bench-{kind}-{index}"
    plane.kubectl("create", "namespace", namespace)
    sdk_config = plane.user_kubeconfig("graft-sdk", namespace, workdir / f"{namespace}.kubeconfig")
    # The child directly: no Graft operator runs here, the thread plays the training operator.
    sdk = Client("kubernetes", kubeconfig=str(sdk_config), direct=True)
    sdk.submit(JOB)
    sdk.get("bench")  # resolves the job's kind once, outside the measured wait
    operator_api = client.CustomObjectsApi(config.new_client_from_config(str(plane.kubeconfig)))
    waiter_api = client.CustomObjectsApi(config.new_client_from_config(str(sdk_config)))
    finished: dict = {}
    before = len(plane.requests_by("graft-sdk"))
    operator = threading.Thread(target=play_operator, args=(operator_api, namespace, args.job_seconds, finished))
    operator.start()
    if kind == "watch":
        assert sdk.wait("bench", timeout=args.job_seconds + 30).phase == "Succeeded"
    else:
        polling_wait(waiter_api, namespace, args.interval)
    returned = time.monotonic()
    operator.join()
    made = [e["verb"] for e in plane.requests_by("graft-sdk")[before:]]
    return {"requests": len(made), "polling_gets": made.count("get"), "lists": made.count("list"),
            "watches": made.count("watch"), "latency_s": returned - finished["at"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job-seconds", type=float, default=6.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"watch": [], "polling": []}
    with temporary_control_plane(REPO.parent / "shared" / "crds") as (plane, tmp):
        for index in range(args.rounds):
            for kind in ("watch", "polling"):  # alternate, so load drift hits both alike
                results[kind].append(one_round(plane, kind, index, args, tmp))
    print(f"real kube-apiserver; job runs {args.job_seconds:.0f} s with a status write every 0.5 s; "
          f"baseline polls every {args.interval:g} s; {args.rounds} rounds each")
    print(f"{'wait':<10}{'requests':>9}{'polling GETs':>14}{'LISTs':>7}{'WATCHes':>9}{'latency s':>11}")
    summary = {}
    for kind, rounds in results.items():
        mean = {k: statistics.mean(r[k] for r in rounds) for k in rounds[0]}
        summary[kind] = mean
        print(f"{kind:<10}{mean['requests']:>9.1f}{mean['polling_gets']:>14.1f}{mean['lists']:>7.1f}"
              f"{mean['watches']:>9.1f}{mean['latency_s']:>11.3f}")
    print(f"ratio watch/polling: requests {summary['watch']['requests'] / summary['polling']['requests']:.2f}, "
          f"latency {summary['watch']['latency_s'] / summary['polling']['latency_s']:.3f}")


if __name__ == "__main__":
    main()
