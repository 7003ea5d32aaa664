"""The SDK's `wait`, `get` and `logs -f` while the real API server is killed and restarted,
while etcd is compacted under an idle watch, and while a container restarts: the user still
gets the right final phase, every transition once, every log line once, or one line naming
the object and the cause with a documented exit code. The jobs are direct PyTorchJobs (no
operator in the way); the test writes their status the way the training operator does."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from graft.api import Client
from tools import wait_for

from apifaults import compact_etcd, restart_apiserver
from node_standin import NODE_NAME

pytestmark = [pytest.mark.controlplane, pytest.mark.faults]
NAME = "fault-digits"
JOB = {
    "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": NAME},
    "spec": {"task": "image-classification", "backbone": {"name": "timm/test_resnet"},
             "data": {"format": "imagefolder", "train": "builtin://sklearn-digits?classes=0-3", "imageSize": 16},
             "strategy": {"phases": [{"name": "head", "epochs": 1, "lr": 0.01}]},
             "training": {"batchSize": 16}, "resources": {"nodes": 2, "procsPerNode": 1}},
}
GRAFT = str(Path(sys.executable).parent / "graft")


@pytest.fixture
def sdk(plane, ns, tmp_path):
    path = plane.user_kubeconfig("graft-sdk", ns, tmp_path / "sdk.kubeconfig")
    return Client("kubernetes", kubeconfig=str(path), direct=True), path


def set_conditions(admin, ns, *conditions):
    admin.custom.patch_namespaced_custom_object_status(
        "kubeflow.org", "v1", ns, "pytorchjobs", NAME, {"status": {"conditions": list(conditions)}})


def sdk_requests(plane, ns):
    return [(e["verb"], (e.get("objectRef") or {}).get("resource"), e["requestURI"])
            for e in plane.requests_by("graft-sdk") if (e.get("objectRef") or {}).get("namespace") == ns]


def watches_opened(plane, ns) -> int:
    return sum(verb == "watch" for verb, _, _ in sdk_requests(plane, ns))


def start_waiting(client):
    seen, result = [], {}

    def run():
        try:
            result["status"] = client.backend.wait(NAME, timeout=180, on_status=seen.append)
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            result["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen, result


def cli(kubeconfig: Path, *args: str, budget: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    if budget is not None:
        env["GRAFT_API_OUTAGE_BUDGET_S"] = str(budget)
    return subprocess.Popen([GRAFT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


RUNNING = {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}
SUCCEEDED = {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded", "message": "done"}


def test_wait_lives_through_an_api_server_restart_and_sees_every_transition_once(plane, admin, ns, sdk):
    client, kubeconfig = sdk
    client.submit(JOB)
    thread, seen, result = start_waiting(client)
    waiting_cli = cli(kubeconfig, "wait", NAME, "--timeout", "180")
    wait_for(lambda: watches_opened(plane, ns) >= 2)  # the SDK's and the CLI's watch are open
    set_conditions(admin, ns, {"type": "Created", "status": "True"}, RUNNING)
    wait_for(lambda: [s.phase for s in seen] == ["Pending", "Running"])
    restart_apiserver(plane)  # kill -9, start again on the same port
    set_conditions(admin, ns, {**RUNNING, "status": "False"}, SUCCEEDED)
    thread.join(120)
    out, err = waiting_cli.communicate(timeout=120)
    assert "error" not in result, result.get("error")
    assert result["status"].phase == "Succeeded"
    assert [s.phase for s in seen] == ["Pending", "Running", "Succeeded"]  # none missed, none twice
    assert waiting_cli.returncode == 0, err
    assert f"{NAME}: Succeeded" in err and "Traceback" not in err


def test_compacted_idle_watch_gets_410_relists_and_misses_nothing(plane, admin, ns, sdk):
    client, _ = sdk
    client.submit(JOB)
    thread, seen, result = start_waiting(client)
    wait_for(lambda: watches_opened(plane, ns) >= 1)
    # The watch is idle at the resourceVersion of its list. Other objects move on, etcd is
    # compacted past that revision, and the API server restarts (its watch cache rebuilt from
    # etcd, the connection dropped without a bookmark): the resumed watch asks for a revision
    # that no longer exists.
    for i in range(5):
        admin.core.create_namespaced_config_map(ns, {"metadata": {"name": f"churn-{i}"}})
    plane.stop_apiserver()
    compact_etcd(plane)
    plane.start_apiserver()
    set_conditions(admin, ns, {"type": "Created", "status": "True"}, RUNNING)
    wait_for(lambda: "Running" in [s.phase for s in seen], timeout=90)
    set_conditions(admin, ns, {**RUNNING, "status": "False"}, SUCCEEDED)
    thread.join(90)
    assert "error" not in result, result.get("error")
    assert [s.phase for s in seen] == ["Pending", "Running", "Succeeded"]
    gone = [e for e in plane.audit_events() if e["user"]["username"] == "graft-sdk" and e["verb"] == "watch"
            and (e.get("objectRef") or {}).get("namespace") == ns and e.get("responseStatus", {}).get("code") == 410]
    lists = [r for r in sdk_requests(plane, ns) if r[0] == "list" and r[1] == "pytorchjobs"]
    assert gone or len(lists) >= 2, "the resumed watch was never refused with 410 Gone"
    assert len(lists) >= 2  # it relisted after 410


def test_outage_longer_than_the_budget_ends_in_one_line_and_exit_1(plane, admin, ns, sdk):
    client, kubeconfig = sdk
    client.submit(JOB)
    waiting = cli(kubeconfig, "wait", NAME, budget=4)
    wait_for(lambda: watches_opened(plane, ns) >= 1)
    plane.stop_apiserver()
    try:
        began = time.monotonic()
        out, err = waiting.communicate(timeout=60)
        gave_up_after = time.monotonic() - began
        getting = cli(kubeconfig, "get", NAME, budget=2)
        _, get_err = getting.communicate(timeout=60)
    finally:
        plane.start_apiserver()
    assert waiting.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"did not answer for 4 s while watching PyTorchJob {ns}/{NAME}" in lines[0]
    assert "connection refused" in lines[0] and "GRAFT_API_OUTAGE_BUDGET_S" in lines[0]
    assert 3 < gave_up_after < 30
    assert getting.returncode == 1 and len(get_err.strip().splitlines()) == 1, get_err
    assert "did not answer for 2 s while reading" in get_err


def test_api_refusals_map_to_the_documented_exit_codes(plane, ns, sdk, tmp_path):
    _, kubeconfig = sdk
    missing = cli(kubeconfig, "get", "no-such-job")
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 3 and "no-such-job" in err and "Traceback" not in err
    # A user the API server does not know: 401, one line, exit 1.
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text(kubeconfig.read_text().replace("graft-sdk-token", "not-a-token"))
    refused = cli(bad, "get", NAME)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "credentials" in err and "Traceback" not in err


RESTARTING = ("import os, sys, time\n"
              "marker = '/scratch/ran'\n"
              "first = not os.path.exists(marker)\n"
              "open(marker, 'a').close()\n"
              "for i in range(3):\n"
              "    print(('first' if first else 'second') + f' run line {i}', flush=True); time.sleep(0.3)\n"
              "sys.exit(3 if first else 0)\n")


def pod(admin, ns, name, code, policy="OnFailure"):
    """A pod bound to the node stand-in by nodeName: after the API server restarts and the etcd
    compaction of the tests before, the kube-scheduler was seen scheduling nothing for over a
    minute while its informers re-established their watches (a CI failure: both pods Pending,
    no node), and the scheduler's recovery is not what these tests are about."""
    admin.core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"graft.dev/job": NAME, "training.kubeflow.org/job-name": NAME}},
        "spec": {"nodeName": NODE_NAME, "restartPolicy": policy, "volumes": [{"name": "scratch", "emptyDir": {}}],
                 "containers": [
            {"name": "pytorch", "image": "graft-trainer", "command": [sys.executable, "-c", code],
             "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}})


def pod_states(admin, ns) -> dict[str, tuple]:
    """Each pod's phase, node and restarts: what a stuck test needs to say."""
    return {p.metadata.name: (p.status.phase, p.spec.node_name,
                              [c.restart_count for c in p.status.container_statuses or []])
            for p in admin.core.list_namespaced_pod(ns).items}


def test_logs_follow_reopens_after_a_container_restart_and_an_api_server_restart(plane, admin, ns, sdk,
                                                                                fault_node):
    client, _ = sdk
    client.submit(JOB)
    lines: list[str] = []
    failure: dict = {}

    def follow():
        try:
            lines.extend(client.logs(NAME, follow=True))
        except BaseException as exc:  # noqa: BLE001
            failure["error"] = exc
    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    master, worker = f"{NAME}-master-0", f"{NAME}-worker-0"
    pod(admin, ns, master, RESTARTING)
    slow = "import time\nfor i in range(40):\n    print(f'worker line {i}', flush=True); time.sleep(0.25)\n"
    pod(admin, ns, worker, slow, policy="Never")
    wait_for(lambda: "worker line 5" in " ".join(lines) or failure, timeout=60,
             explain=lambda: f"pods {pod_states(admin, ns)}, last lines {lines[-3:]}")
    assert "error" not in failure, failure  # a follow that failed early says how, not a timeout
    restart_apiserver(plane)  # every open log stream drops; the worker keeps writing
    wait_for(lambda: admin.core.read_namespaced_pod(master, ns).status.phase == "Succeeded", timeout=90)
    wait_for(lambda: admin.core.read_namespaced_pod(worker, ns).status.phase == "Succeeded", timeout=90)
    set_conditions(admin, ns, SUCCEEDED)
    follower.join(90)
    assert not follower.is_alive() and "error" not in failure, failure
    mine = [line for line in lines if line.startswith(f"[{master}]")]
    assert mine == [f"[{master}] {run} run line {i}" for run in ("first", "second") for i in range(3)]
    theirs = [line for line in lines if line.startswith(f"[{worker}]")]
    assert theirs == [f"[{worker}] worker line {i}" for i in range(40)]  # in order, none twice, none lost
    assert admin.core.read_namespaced_pod(master, ns).status.container_statuses[0].restart_count == 1


def test_logs_follow_reports_a_failed_watch_instead_of_ending_quietly(plane, admin, ns, sdk, monkeypatch):
    client, kubeconfig = sdk
    client.submit(JOB)
    follower = cli(kubeconfig, "logs", "-f", NAME, budget=3)
    wait_for(lambda: watches_opened(plane, ns) >= 2)
    plane.stop_apiserver()
    try:
        _, err = follower.communicate(timeout=60)
    finally:
        plane.start_apiserver()
    assert follower.returncode == 1, err
    assert "did not answer for 3 s while watching" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
