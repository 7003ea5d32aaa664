"""API calls made while waiting for a job: `graft wait` (watch) vs a naive polling wait.

Runs against the kmock Kubernetes API *emulator* on loopback (tests/kube_emulator.py); a thread
plays the training operator, updating the PyTorchJob status every 0.5 s (Created, Running,
progress) and marking it Succeeded after --job-seconds. Both waits run alternately on the same
scenario. Counted: every request the emulator received from the waiter (GET = FETCH, LIST or
WATCH), and how long after the Succeeded write each waiter returned.

    .venv/bin/python bench/bench_wait.py [--job-seconds 6] [--interval 2] [--rounds 2]

The baseline polls `get` every --interval seconds (the Kubeflow SDK's wait_for_job_status
default is 2 s), which is what a client without watch does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kube_emulator import Emulator  # noqa: E402
from kubernetes import client, config  # noqa: E402

from graft.api import Client  # noqa: E402

JOB = {
    "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench"},
    "spec": {"task": "image-classification", "backbone": {"name": "timm/resnet18"},
             "data": {"format": "imagefolder", "train": "/data/train"},
             "strategy": {"phases": [{"epochs": 1, "lr": 0.001}]}},
}
PYTORCHJOBS = ("kubeflow.org", "v1", "default", "pytorchjobs")


def play_operator(custom, job_seconds: float, finished: dict) -> None:
    """Status churn as the training operator writes it, then Succeeded."""
    start = time.monotonic()
    conditions = [{"type": "Created", "status": "True"}]
    step = 0
    while time.monotonic() - start < job_seconds:
        time.sleep(0.5)
        step += 1
        running = {"type": "Running", "status": "True", "message": f"step {step}"}
        custom.patch_namespaced_custom_object(*PYTORCHJOBS, "bench", {"status": {"conditions": conditions + [running]}})
    done = {"type": "Succeeded", "status": "True", "message": "PyTorchJob bench is successfully completed."}
    finished["at"] = time.monotonic()
    custom.patch_namespaced_custom_object(*PYTORCHJOBS, "bench", {"status": {"conditions": conditions + [done]}})


def polling_wait(custom, interval: float) -> None:
    while True:
        obj = custom.get_namespaced_custom_object(*PYTORCHJOBS, "bench")
        types = {c["type"] for c in (obj.get("status") or {}).get("conditions", []) if c["status"] == "True"}
        if types & {"Succeeded", "Failed"}:
            return
        time.sleep(interval)


def one_round(kind: str, args, kubeconfig: Path) -> dict:
    with Emulator() as emulator:
        emulator.write_kubeconfig(kubeconfig)
        sdk = Client("kubernetes", kubeconfig=str(kubeconfig))
        sdk.submit(JOB)
        sdk.get("bench")  # resolves the job's kind once, outside the measured wait
        operator_api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
        waiter_api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
        finished: dict = {}
        before = len(emulator.requests())
        operator = threading.Thread(target=play_operator, args=(operator_api, args.job_seconds, finished))
        operator.start()
        if kind == "watch":
            status = sdk.wait("bench", timeout=args.job_seconds + 30)
            assert status.phase == "Succeeded"
        else:
            polling_wait(waiter_api, args.interval)
        returned = time.monotonic()
        operator.join()
        made = [r for r in emulator.requests()[before:] if r.method.name == "GET"]
        return {
            "gets": len(made),
            "polling_gets": sum(r.action.name == "FETCH" for r in made),
            "lists": sum(r.action.name == "LIST" for r in made),
            "watches": sum(r.action.name == "WATCH" for r in made),
            "latency_s": returned - finished["at"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job-seconds", type=float, default=6.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"watch": [], "polling": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for kind in ("watch", "polling"):  # alternate, so load drift hits both alike
                results[kind].append(one_round(kind, args, Path(tmp) / "kubeconfig"))
    print(f"job runs {args.job_seconds:.0f} s with a status write every 0.5 s; "
          f"baseline polls every {args.interval:g} s; {args.rounds} rounds each")
    print(f"{'wait':<10}{'GETs':>6}{'polling GETs':>14}{'LISTs':>7}{'WATCHes':>9}{'latency s':>11}")
    summary = {}
    for kind, rounds in results.items():
        mean = {k: statistics.mean(r[k] for r in rounds) for k in rounds[0]}
        summary[kind] = mean
        print(f"{kind:<10}{mean['gets']:>6.1f}{mean['polling_gets']:>14.1f}{mean['lists']:>7.1f}"
              f"{mean['watches']:>9.1f}{mean['latency_s']:>11.3f}")
    print(f"ratio watch/polling: GETs {summary['watch']['gets'] / summary['polling']['gets']:.2f}, "
          f"polling GETs {summary['watch']['polling_gets']:.0f} vs {summary['polling']['polling_gets']:.1f}, "
          f"latency {summary['watch']['latency_s'] / summary['polling']['latency_s']:.2f}")


if __name__ == "__main__":
    main()
