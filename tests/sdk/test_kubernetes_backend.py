"""The Kubernetes backend against the kmock API *emulator* on loopback (not a real API server:
no scheduler, no operator, no kubelet). The test plays the training operator and the kubelet
by writing pods, statuses and events through the API, so the SDK sees them only the way it
would on a cluster: through LIST/WATCH/GET responses."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from kubernetes import client, config
from typer.testing import CliRunner

from graft.api import Client
from graft.cli import app

from sdk_specs import TINY_JOB, write_spec

pytestmark = pytest.mark.integration
PYTORCHJOBS = ("kubeflow.org", "v1", "default", "pytorchjobs")


@pytest.fixture
def kube(kubeconfig):
    """(the SDK client under test, a raw API client playing operator and kubelet)."""
    api = config.new_client_from_config(str(kubeconfig))
    return Client("kubernetes", kubeconfig=str(kubeconfig)), client.CoreV1Api(api), client.CustomObjectsApi(api)


def _later(seconds, action):
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def _set_conditions(custom, *conditions):
    custom.patch_namespaced_custom_object(*PYTORCHJOBS, TINY_JOB["metadata"]["name"],
                                          {"status": {"conditions": list(conditions)}})


def _pod(name, phase, *, job="tiny-digits", status=None):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"graft.dev/job": job, "training.kubeflow.org/job-name": job}},
            "spec": {"containers": [{"name": "pytorch", "image": "graft-trainer"}]},
            "status": {"phase": phase, **(status or {})}}


def test_submit_creates_the_spec_configmap_and_the_pytorchjob(emulator, kube):
    sdk, _, _ = kube
    ref = sdk.submit(TINY_JOB)
    assert (ref.kind, ref.namespace) == ("PyTorchJob", "default")
    configmap = emulator.stored("v1/configmaps", "tiny-digits-spec")
    assert yaml.safe_load(configmap["data"]["spec.yaml"])["metadata"]["name"] == "tiny-digits"
    job = emulator.stored("kubeflow.org/v1/pytorchjobs", "tiny-digits")
    assert job["metadata"]["labels"]["graft.dev/job"] == "tiny-digits"
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert sdk.get("tiny-digits").phase == "Pending"
    assert [s.name for s in sdk.list()] == ["tiny-digits"]


def test_invalid_spec_submits_nothing_and_exits_2(emulator, kubeconfig, tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(TINY_JOB))
    doc["spec"]["resources"].update(procsPerNode=2, gpusPerNode=3)
    result = CliRunner().invoke(app, ["submit", str(write_spec(tmp_path / "bad.yaml", doc))])
    assert result.exit_code == 2
    assert "gpusPerNode must be a multiple of procsPerNode" in result.output
    assert emulator.requests() == []


def test_wait_is_woken_by_the_watch_and_makes_no_polling_gets(emulator, kube):
    sdk, _, custom = kube
    sdk.submit(TINY_JOB)
    before = len(emulator.requests())
    _later(0.5, lambda: _set_conditions(custom, {"type": "Running", "status": "True"}))
    _later(1.0, lambda: _set_conditions(
        custom, {"type": "Running", "status": "False"},
        {"type": "Succeeded", "status": "True", "message": "PyTorchJob tiny-digits is successfully completed."}))
    started = time.monotonic()
    status = sdk.wait("tiny-digits", timeout=20)
    assert status.phase == "Succeeded" and "successfully completed" in status.message
    assert time.monotonic() - started < 5
    made_by_wait = [r for r in emulator.requests()[before:] if r.method.name == "GET"]
    assert [r.action.name for r in made_by_wait] == ["LIST", "WATCH"]


def test_cli_wait_exits_4_when_the_job_fails(emulator, kube):
    sdk, _, custom = kube
    sdk.submit(TINY_JOB)
    _set_conditions(custom, {"type": "Failed", "status": "True", "message": "Master replica failed"})
    result = CliRunner().invoke(app, ["wait", "tiny-digits", "--timeout", "10"])
    assert result.exit_code == 4, result.output
    assert "Master replica failed" in result.output


def test_logs_follow_merges_pods_including_one_that_starts_later(emulator, kube):
    sdk, core, custom = kube
    sdk.submit(TINY_JOB)
    emulator.pod_logs["tiny-digits-master-0"] = ["epoch 1 loss 2.1", "done"]
    emulator.pod_logs["tiny-digits-worker-0"] = ["worker ready", "done"]
    core.create_namespaced_pod("default", _pod("tiny-digits-master-0", "Running"))
    lines: list[str] = []
    follower = threading.Thread(target=lambda: lines.extend(sdk.logs("tiny-digits", follow=True)))
    follower.start()
    time.sleep(0.5)
    core.create_namespaced_pod("default", _pod("tiny-digits-worker-0", "Running"))
    core.create_namespaced_pod("default", _pod("other-job-master-0", "Running", job="other-job"))
    time.sleep(0.5)
    _set_conditions(custom, {"type": "Succeeded", "status": "True"})
    follower.join(15)
    assert not follower.is_alive(), "logs(follow=True) did not end after the job finished"
    assert sorted(lines) == sorted([
        "[tiny-digits-master-0] epoch 1 loss 2.1", "[tiny-digits-master-0] done",
        "[tiny-digits-worker-0] worker ready", "[tiny-digits-worker-0] done",
    ])


def _terminated(message, exit_code=0):
    return {"containerStatuses": [{"name": "pytorch", "image": "graft-trainer", "imageID": "", "ready": False,
                                   "restartCount": 0, "state": {"terminated": {
                                       "exitCode": exit_code, "reason": "Completed" if not exit_code else "Error",
                                       "message": message}}}]}


def test_get_reports_the_final_summary_rank0_left_in_its_termination_message(emulator, kube):
    sdk, core, _ = kube
    sdk.submit(TINY_JOB)
    assert sdk.get("tiny-digits").metrics == {}  # no pod has finished yet
    summary = {"best_metric": "val_accuracy", "best_value": 0.93, "best_epoch": 2, "val_accuracy": 0.91,
               "epochs_run": 3, "model_dir": "/workspace/out/model"}
    # A worker that crashed: FallbackToLogsOnError puts its log tail, not JSON, in the message.
    core.create_namespaced_pod("default", _pod("tiny-digits-worker-0", "Failed", status=_terminated(
        "Traceback (most recent call last):\nRuntimeError: NCCL timeout", exit_code=1)))
    core.create_namespaced_pod("default", _pod("other-job-master-0", "Succeeded", job="other-job",
                                                status=_terminated('{"val_accuracy": 0.11}')))
    assert sdk.get("tiny-digits").metrics == {}
    core.create_namespaced_pod("default", _pod("tiny-digits-master-0", "Succeeded",
                                               status=_terminated(json.dumps(summary))))
    assert sdk.get("tiny-digits").metrics == summary


def test_why_explains_an_unschedulable_gpu_pod_and_a_quota_refusal(emulator, kube):
    sdk, core, _ = kube
    sdk.submit(TINY_JOB)
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    core.create_namespaced_pod("default", _pod("tiny-digits-master-0", "Pending", status={
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": message}]}))
    core.create_namespaced_event("default", {
        "metadata": {"name": "tiny-digits.quota", "namespace": "default"},
        "involvedObject": {"kind": "PyTorchJob", "name": "tiny-digits", "namespace": "default"},
        "type": "Warning", "reason": "FailedCreatePod",
        "message": 'pods "tiny-digits-worker-0" is forbidden: exceeded quota: gpu-quota'})
    text = sdk.why("tiny-digits")
    assert "PyTorchJob default/tiny-digits is Pending" in text
    assert message in text and "gpusPerNode" in text
    assert "exceeded quota: gpu-quota" in text and "ResourceQuota" in text
    assert "\n" not in text
    assert any("FailedCreatePod" in line for line in sdk.events("tiny-digits"))


def test_why_explains_an_image_pull_failure(emulator, kube):
    sdk, core, _ = kube
    sdk.submit(TINY_JOB)
    core.create_namespaced_pod("default", _pod("tiny-digits-master-0", "Pending", status={
        "containerStatuses": [{"name": "pytorch", "image": "graft-trainer", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"waiting": {
                                   "reason": "ImagePullBackOff", "message": 'Back-off pulling image "graft-trainer"'}}}]}))
    text = sdk.why("tiny-digits")
    assert "ImagePullBackOff" in text and "spec.kubernetes.image" in text


def test_suspend_resume_and_delete_change_the_stored_objects(emulator, kube):
    sdk, _, _ = kube
    sdk.submit(TINY_JOB)
    sdk.suspend("tiny-digits")
    assert emulator.stored("kubeflow.org/v1/pytorchjobs", "tiny-digits")["spec"]["runPolicy"]["suspend"] is True
    sdk.resume("tiny-digits")
    assert emulator.stored("kubeflow.org/v1/pytorchjobs", "tiny-digits")["spec"]["runPolicy"]["suspend"] is False
    sdk.delete("tiny-digits")
    assert emulator.stored("kubeflow.org/v1/pytorchjobs", "tiny-digits") is None
    assert emulator.stored("v1/configmaps", "tiny-digits-spec") is None
    result = CliRunner().invoke(app, ["get", "tiny-digits"])
    assert result.exit_code == 3
