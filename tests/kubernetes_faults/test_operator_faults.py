"""The operator (a real process, the chart's ServiceAccount) under load and faults on a control
plane of its own: 50 running jobs each followed by a log stream while a new job arrives; kill -9
in the middle of creating 100 jobs; the API server restarted under it. What a user would notice:
every FineTuneJob gets exactly one child, and its status says so."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tools import wait_for

from apifaults import restart_apiserver
from apifaults import OPERATOR_USER

pytestmark = [pytest.mark.controlplane, pytest.mark.faults]
EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "finetunejob.yaml").read_text())


def document(name: str, ns: str) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(EXAMPLE))
    doc["metadata"] = {"name": name, "namespace": ns}
    return doc


def create(admin, ns: str, name: str) -> dict:
    return admin.custom.create_namespaced_custom_object("graft.dev", "v1alpha1", ns, "finetunejobs",
                                                        document(name, ns))


def children(admin, ns: str) -> list[dict]:
    return admin.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"]


def finetunejobs(admin, ns: str) -> list[dict]:
    return admin.custom.list_namespaced_custom_object("graft.dev", "v1alpha1", ns, "finetunejobs")["items"]


def log_follows(plane, ns: str) -> set[str]:
    """Pods whose log the operator has opened (the API server's audit log)."""
    return {e["objectRef"]["name"] for e in plane.audit_events()
            if e["user"].get("username") == OPERATOR_USER and (e.get("objectRef") or {}).get("namespace") == ns
            and e["objectRef"].get("subresource") == "log"}


def master_pod(admin, ns: str, job: str, command: list[str]) -> None:
    """Rank 0's pod as the training operator creates it (the node stand-in runs it)."""
    admin.core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-master-0", "labels": {
            "graft.dev/job": job, "training.kubeflow.org/job-name": job,
            "training.kubeflow.org/replica-type": "master"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "pytorch", "image": "graft-trainer",
                                                          "command": command}]}})


def assert_one_child_each(admin, ns: str, names: list[str]) -> None:
    jobs = {j["metadata"]["name"]: j for j in finetunejobs(admin, ns)}
    kids = children(admin, ns)
    assert sorted(c["metadata"]["name"] for c in kids) == sorted(names)  # one each, nothing else
    for child in kids:
        job = jobs[child["metadata"]["name"]]
        owners = child["metadata"]["ownerReferences"]
        assert [o["uid"] for o in owners] == [job["metadata"]["uid"]]
    for name, job in jobs.items():
        status = job.get("status") or {}
        assert status.get("phase") == "Pending", (name, status)
        assert status.get("child", {}).get("name") == name, (name, status)
        created = next(c for c in status["conditions"] if c["type"] == "ChildCreated")
        assert created["status"] == "True", (name, created)


def all_settled(admin, ns: str, count: int) -> bool:
    jobs = finetunejobs(admin, ns)
    return len(jobs) == count and all((j.get("status") or {}).get("child") for j in jobs)


def test_a_new_job_gets_its_child_while_50_running_jobs_are_followed(plane, admin, ns, fault_operator, fault_node):
    names = [f"busy-{i}" for i in range(50)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: create(admin, ns, n), names))
    wait_for(lambda: len(children(admin, ns)) == 50, timeout=120, interval=0.5)
    for name in names:  # each rank 0 runs and writes nothing more: its log follow stays open
        master_pod(admin, ns, name, ["sh", "-c", "echo 'graft-progress {\"epoch\": 1, \"epochs\": 4}'; sleep 600"])
    wait_for(lambda: len(log_follows(plane, ns)) == 50, timeout=180, interval=1)
    began = time.monotonic()
    create(admin, ns, "newcomer")
    wait_for(lambda: any(c["metadata"]["name"] == "newcomer" for c in children(admin, ns)), timeout=60, interval=0.05)
    took = time.monotonic() - began
    print(f"child of a new FineTuneJob while 50 log follows are open: {took:.2f} s")
    running = [p for p in admin.core.list_namespaced_pod(ns).items if p.status.phase == "Running"]
    assert len(running) == 50  # all 50 were still running (and followed) when it came
    # and the followers publish: every busy job shows rank 0's progress line
    wait_for(lambda: all(((j.get("status") or {}).get("progress") or {}).get("summary") == "1/4 epochs"
                         for j in finetunejobs(admin, ns) if j["metadata"]["name"] != "newcomer"), timeout=60)
    assert fault_operator.proc.poll() is None


def test_kill_9_in_the_middle_of_creating_100_jobs_leaves_one_child_each(plane, admin, ns, fault_operator):
    names = [f"job-{i}" for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(create, admin, ns, n) for n in names]
        wait_for(lambda: len(children(admin, ns)) >= 20, timeout=120, interval=0.05)
        fault_operator.kill(9)
        made_before_kill = len(children(admin, ns))
        for future in futures:
            future.result()
    fault_operator.restart()
    wait_for(lambda: all_settled(admin, ns, 100), timeout=180, interval=0.5)
    print(f"children before the kill: {made_before_kill} of 100")
    assert made_before_kill < 100
    assert_one_child_each(admin, ns, names)


def test_the_operator_recovers_from_an_api_server_restart_without_its_own(plane, admin, ns, fault_operator):
    create(admin, ns, "before")
    wait_for(lambda: all_settled(admin, ns, 1), timeout=60)
    pid = fault_operator.proc.pid
    restart_apiserver(plane)
    create(admin, ns, "after")  # its create event arrives on a watch kopf had to reopen
    wait_for(lambda: all_settled(admin, ns, 2), timeout=90, interval=0.2)
    # the child's status still reaches its FineTuneJob through the reopened child watch
    admin.custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", ns, "pytorchjobs", "before", {
        "status": {"conditions": [{"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}]}})
    wait_for(lambda: (admin.custom.get_namespaced_custom_object("graft.dev", "v1alpha1", ns, "finetunejobs",
                                                                "before").get("status") or {}).get("phase") == "Running",
             timeout=60)
    assert fault_operator.proc.poll() is None and fault_operator.proc.pid == pid
    assert sorted(c["metadata"]["name"] for c in children(admin, ns)) == ["after", "before"]
