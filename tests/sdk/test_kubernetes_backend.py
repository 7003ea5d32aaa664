"""The Kubernetes backend against the real control plane (tests/controlplane): real watches and
resourceVersions, server-side validation against the real CRDs, the real scheduler. The cluster
serves the FineTuneJob CRD and Graft's operator runs, so the SDK submits FineTuneJobs and the
operator creates the children; `direct` jobs (the path for clusters without Graft's CRD) are
tested beside them, answering the same verbs the same way. No training operator runs here
(tests/controllers runs it), so the test writes the PyTorchJob's status through its status
subresource the way the training operator does, and creates pods as it would. Each test has its
own namespace; the SDK talks as user `graft-sdk`, the test as `graft-admin`, so the API server's
audit log shows exactly which requests the SDK made."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from types import SimpleNamespace

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from graft.api import Client
from graft.cli import app

from sdk_specs import TINY_JOB, write_spec
from tools import wait_for

pytestmark = pytest.mark.controlplane
NAME = TINY_JOB["metadata"]["name"]
INERT_NODE = "no-kubelet-here"  # pods bound to a node no kubelet serves stay exactly as written


@pytest.fixture(params=["finetunejob", "direct"])
def kube(request, control_plane, operator, namespace, tmp_path, monkeypatch):
    """The SDK client under test (user graft-sdk, also the CLI's KUBECONFIG), on either path,
    and admin clients that play the training operator and the kubelet."""
    sdk_config = control_plane.user_kubeconfig("graft-sdk", namespace, tmp_path / "sdk.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(sdk_config))
    admin = config.new_client_from_config(str(control_plane.kubeconfig))
    direct = request.param == "direct"
    return SimpleNamespace(sdk=Client("kubernetes", kubeconfig=str(sdk_config), direct=direct or None),
                           ns=namespace, direct=direct, kind="PyTorchJob" if direct else "FineTuneJob",
                           core=client.CoreV1Api(admin), custom=client.CustomObjectsApi(admin),
                           plane=control_plane)


def submit(kube, document=TINY_JOB):
    """Submit through the SDK, then wait for the child the training operator would act on."""
    ref = kube.sdk.submit(document)
    wait_for(lambda: pytorchjob(kube))
    return ref


def set_conditions(kube, *conditions):
    """What the training operator writes: PyTorchJob status, through the status subresource."""
    kube.custom.patch_namespaced_custom_object_status(
        "kubeflow.org", "v1", kube.ns, "pytorchjobs", NAME, {"status": {"conditions": list(conditions)}})


def pytorchjob(kube) -> dict | None:
    try:
        return kube.custom.get_namespaced_custom_object("kubeflow.org", "v1", kube.ns, "pytorchjobs", NAME)
    except ApiException as exc:
        assert exc.status == 404
        return None


def pod(kube, name, *, job=NAME, node=INERT_NODE, command=None, resources=None, status=None):
    """A pod as the training operator creates it; with `status`, the kubelet's report of it."""
    container = {"name": "pytorch", "image": "graft-trainer",
                 "command": command or ["true"], "resources": resources or {}}
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"graft.dev/job": job, "training.kubeflow.org/job-name": job}},
            "spec": {"containers": [container], "restartPolicy": "Never",
                     **({"nodeName": node} if node else {})}}
    kube.core.create_namespaced_pod(kube.ns, body)
    if status:
        kube.core.patch_namespaced_pod_status(name, kube.ns, {"status": status})


def plural(kube) -> str:
    """What the job is on this path, as the audit log names the resource."""
    return "pytorchjobs" if kube.direct else "finetunejobs"


def sdk_requests(kube, since: int = 0) -> list[tuple[str, str]]:
    """(verb, resource) of every request the SDK made in this test's namespace, from the API
    server's audit log."""
    mine = [e for e in kube.plane.requests_by("graft-sdk") if (e.get("objectRef") or {}).get("namespace") == kube.ns]
    return [(e["verb"], e["objectRef"].get("resource", "")) for e in mine[since:]]


def test_submit_makes_the_spec_configmap_and_a_pytorchjob_the_real_crd_accepts(kube):
    ref = submit(kube)
    assert (ref.kind, ref.namespace, ref.note) == (kube.kind, kube.ns, None)
    configmap = kube.core.read_namespaced_config_map(f"{NAME}-spec", kube.ns)
    assert yaml.safe_load(configmap.data["spec.yaml"])["metadata"]["name"] == NAME
    job = pytorchjob(kube)
    assert job["metadata"]["labels"]["graft.dev/job"] == NAME
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert kube.sdk.get(NAME).phase == "Pending"
    assert [s.name for s in kube.sdk.list()] == [NAME]
    listed = kube.plane.kubectl("get", "ftj", "-n", kube.ns, "-o", "name").stdout.split()
    if kube.direct:
        assert sdk_requests(kube)[:2] == [("create", "configmaps"), ("create", "pytorchjobs")]
        assert listed == []
    else:  # a FineTuneJob, the operator the only creator of its children, with its Events
        assert sdk_requests(kube)[:1] == [("create", "finetunejobs")]
        assert listed == [f"finetunejob.graft.dev/{NAME}"]
        assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
        # the operator posts it just after creating the child submit() waited for
        wait_for(lambda: any("Created" in line for line in kube.sdk.events(NAME)))


def test_invalid_spec_submits_nothing_and_exits_2(kube, tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(TINY_JOB))
    doc["spec"]["resources"].update(procsPerNode=2, gpusPerNode=3)
    result = CliRunner().invoke(app, ["submit", str(write_spec(tmp_path / "bad.yaml", doc))])
    assert result.exit_code == 2
    assert "gpusPerNode must be a multiple of procsPerNode" in result.output
    assert sdk_requests(kube) == []  # not one request reached the API server


def test_wait_is_woken_by_the_watch_and_makes_no_polling_gets(kube):
    submit(kube)
    before = len(sdk_requests(kube))
    set_conditions(kube, {"type": "Created", "status": "True"})
    waiter_started = threading.Event()
    result: dict = {}

    def waiter():
        waiter_started.set()
        result["status"] = kube.sdk.wait(NAME, timeout=60)

    thread = threading.Thread(target=waiter)
    thread.start()
    waiter_started.wait()
    # The watch is open once the API server has logged it; then the job moves on twice.
    wait_for(lambda: ("watch", plural(kube)) in sdk_requests(kube, before))
    set_conditions(kube, {"type": "Running", "status": "True"})
    set_conditions(kube, {"type": "Running", "status": "False"},
                   {"type": "Succeeded", "status": "True", "message": f"PyTorchJob {NAME} is successfully completed."})
    thread.join(60)
    assert result["status"].phase == "Succeeded" and "successfully completed" in result["status"].message
    assert sdk_requests(kube, before) == [("list", plural(kube)), ("watch", plural(kube))]


def test_wait_resumes_each_ended_watch_from_its_resource_version(kube, monkeypatch):
    """The server ends every watch after its timeout; the SDK reopens it from the last
    resourceVersion it saw (no relist, no missed transition)."""
    # Not a mock: the watch timeout the SDK asks the real server for (timeoutSeconds), made 1 s
    # so the server ends several watches within the test instead of one per 5 minutes.
    monkeypatch.setattr("graft.backends.kubernetes.WATCH_SERVER_TIMEOUT_S", 1)
    submit(kube)
    before = len(sdk_requests(kube))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(status=kube.sdk.wait(NAME, timeout=60)))
    thread.start()
    wait_for(lambda: sdk_requests(kube, before).count(("watch", plural(kube))) >= 3)
    set_conditions(kube, {"type": "Succeeded", "status": "True", "message": "done"})
    thread.join(60)
    assert result["status"].phase == "Succeeded"
    watches = [e for e in kube.plane.requests_by("graft-sdk")
               if e["verb"] == "watch" and e["objectRef"].get("namespace") == kube.ns]
    assert sdk_requests(kube, before).count(("list", plural(kube))) == 1
    assert all("resourceVersion=" in e["requestURI"] for e in watches)


def test_cli_wait_exits_4_when_the_job_fails(kube):
    submit(kube)
    set_conditions(kube, {"type": "Failed", "status": "True", "message": "Master replica failed"})
    result = CliRunner().invoke(app, ["wait", NAME, "--timeout", "30"])
    assert result.exit_code == 4, result.output
    assert "Master replica failed" in result.output


def test_logs_follow_reads_real_pod_logs_through_the_api_server(kube, node):
    """Pods the real scheduler binds to the node stand-in, which runs them and serves their
    logs on the kubelet endpoint; the SDK reads them through the API server's pods/log."""
    submit(kube)
    lines: list[str] = []
    follower = threading.Thread(target=lambda: lines.extend(kube.sdk.logs(NAME, follow=True)))
    follower.start()
    python = sys.executable
    pod(kube, f"{NAME}-master-0", node=None, command=[python, "-c", "print('epoch 1 loss 2.1'); print('done')"])
    pod(kube, f"{NAME}-worker-0", node=None, command=[python, "-c", "print('worker ready'); print('done')"])
    pod(kube, "other-job-master-0", job="other-job", node=None, command=[python, "-c", "print('not mine')"])
    for name in (f"{NAME}-master-0", f"{NAME}-worker-0"):
        wait_for(lambda: kube.core.read_namespaced_pod(name, kube.ns).status.phase == "Succeeded")
    set_conditions(kube, {"type": "Succeeded", "status": "True"})
    follower.join(60)
    assert not follower.is_alive(), "logs(follow=True) did not end after the job finished"
    assert sorted(lines) == sorted([
        f"[{NAME}-master-0] epoch 1 loss 2.1", f"[{NAME}-master-0] done",
        f"[{NAME}-worker-0] worker ready", f"[{NAME}-worker-0] done",
    ])
    assert node.pods_run.count(f"{kube.ns}/{NAME}-master-0") == 1


def terminated(message, exit_code=0):
    return {"phase": "Succeeded" if not exit_code else "Failed", "containerStatuses": [{
        "name": "pytorch", "image": "graft-trainer", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if not exit_code else "Error",
                                 "message": message}}}]}


def test_get_reports_the_final_summary_rank0_left_in_its_termination_message(kube):
    submit(kube)
    assert kube.sdk.get(NAME).metrics == {}  # no pod has finished yet
    summary = {"best_metric": "val_accuracy", "best_value": 0.93, "best_epoch": 2, "val_accuracy": 0.91,
               "epochs_run": 3, "model_dir": "/workspace/out/model"}
    # A worker that crashed: FallbackToLogsOnError puts its log tail, not JSON, in the message.
    pod(kube, f"{NAME}-worker-0", status=terminated("Traceback (most recent call last):\n"
                                                    "RuntimeError: NCCL timeout", exit_code=1))
    pod(kube, "other-job-master-0", job="other-job", status=terminated('{"val_accuracy": 0.11}'))
    assert kube.sdk.get(NAME).metrics == {}
    pod(kube, f"{NAME}-master-0", status=terminated(json.dumps(summary)))
    assert kube.sdk.get(NAME).metrics == summary


def test_why_names_the_real_schedulers_reason_and_a_quota_refusal(kube, node):
    submit(kube)
    # The scheduler itself decides: the only node (the stand-in) has no GPUs.
    pod(kube, f"{NAME}-master-0", node=None, resources={"limits": {"nvidia.com/gpu": "1"}})
    wait_for(lambda: any(c.reason == "Unschedulable" for c in
                            kube.core.read_namespaced_pod(f"{NAME}-master-0", kube.ns).status.conditions or []))
    # A ResourceQuota the real quota admission enforces; the training operator reports the refusal.
    kube.core.create_namespaced_resource_quota(kube.ns, {"metadata": {"name": "gpu-quota"},
                                                         "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}})
    wait_for(lambda: kube.core.read_namespaced_resource_quota("gpu-quota", kube.ns).status.hard)
    attempts = itertools.count()

    def refused_by_quota() -> ApiException | None:
        """The quota admission reads quotas from its informer; until that holds the new one it
        trusts a live lookup it made for master-0 (no quotas, kept 30 s), so under load a pod
        can still be admitted: remove it and try the next."""
        name = f"{NAME}-worker-{next(attempts)}"
        try:
            pod(kube, name, node=None, resources={"limits": {"nvidia.com/gpu": "1"}})
        except ApiException as exc:
            return exc
        kube.core.delete_namespaced_pod(name, kube.ns, grace_period_seconds=0)
        return None

    refused = wait_for(refused_by_quota, timeout=60, interval=0.5)
    refusal = json.loads(refused.body)["message"]
    assert refused.status == 403 and "exceeded quota: gpu-quota" in refusal
    kube.core.create_namespaced_event(kube.ns, {
        "metadata": {"name": f"{NAME}.quota"},
        "involvedObject": {"kind": "PyTorchJob", "name": NAME, "namespace": kube.ns},
        "type": "Warning", "reason": "FailedCreatePod", "message": refusal})
    text = kube.sdk.why(NAME)
    assert f"{kube.kind} {kube.ns}/{NAME} is Pending" in text
    assert "Insufficient nvidia.com/gpu" in text and "gpusPerNode" in text
    assert "exceeded quota: gpu-quota" in text and "ResourceQuota" in text
    assert "\n" not in text
    assert any("FailedScheduling" in line for line in kube.sdk.events(NAME))


def test_why_explains_an_image_pull_failure(kube):
    submit(kube)
    pod(kube, f"{NAME}-master-0", status={"phase": "Pending", "containerStatuses": [{
        "name": "pytorch", "image": "graft-trainer", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "graft-trainer"'}}}]})
    text = kube.sdk.why(NAME)
    assert "ImagePullBackOff" in text and "spec.kubernetes.image" in text


def test_suspend_resume_and_delete_change_the_live_objects(kube):
    submit(kube)
    kube.sdk.suspend(NAME)  # on a FineTuneJob, the operator carries it to the child
    wait_for(lambda: pytorchjob(kube)["spec"]["runPolicy"]["suspend"] is True)
    kube.sdk.resume(NAME)
    wait_for(lambda: pytorchjob(kube)["spec"]["runPolicy"]["suspend"] is False)
    kube.sdk.delete(NAME)  # on a FineTuneJob, the garbage collector removes the children
    wait_for(lambda: pytorchjob(kube) is None)
    wait_for(lambda: not kube.core.list_namespaced_config_map(
        kube.ns, field_selector=f"metadata.name={NAME}-spec").items)
    result = CliRunner().invoke(app, ["get", NAME])
    assert result.exit_code == 3


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory, crds_dir):
    """A control plane of its own with only the Kubeflow PyTorchJob CRD: a cluster where
    Graft's CRD and operator are not installed."""
    import yaml as pyyaml

    from controlplane.cluster import ControlPlane

    with ControlPlane(tmp_path_factory.mktemp("bare-plane"), scheduler=False) as plane:
        plane.install_crds([pyyaml.safe_load((crds_dir / "kubeflow.org_pytorchjobs.yaml").read_text())])
        yield plane


def test_without_graft_crd_submit_creates_the_child_with_a_one_line_note(bare_cluster, tmp_path, monkeypatch):
    sdk_config = bare_cluster.user_kubeconfig("graft-sdk", "default", tmp_path / "sdk.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(sdk_config))
    result = CliRunner().invoke(app, ["submit", str(write_spec(tmp_path / "tiny.yaml", TINY_JOB))])
    assert result.exit_code == 0, result.output
    assert "submitted PyTorchJob default/tiny-digits" in result.output
    (note,) = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert "does not serve FineTuneJobs" in note and "--direct" in note
    refused = Client("kubernetes", kubeconfig=str(sdk_config), direct=False)
    with pytest.raises(RuntimeError, match="install Graft's chart"):
        refused.submit({**TINY_JOB, "metadata": {"name": "insists"}})
    assert Client("kubernetes", kubeconfig=str(sdk_config)).get(NAME).phase == "Pending"
