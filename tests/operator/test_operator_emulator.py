"""The operator as a real process (`python -m graft.operator --standalone`, kopf clusterwide)
against the kmock API *emulator* on loopback. The emulator stores objects and streams watch
events; it does not run the Kubeflow/KubeRay controllers, assign uids or collect garbage, so the
tests play the controllers' part by patching child/pod status through the API, set uids as an
API server would, and assert on what the operator stored and reported. A real cluster (kind,
marker `kind`) is where cascading deletion and real child controllers are exercised."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from operator_process import wait_for
from tools import venv_tool
from kubernetes import client

from graft.operator.book import StatusBook
from graft.operator.handlers import create_children
from graft.operator.kube import Kube
from graft.render import render
from graft.spec import parse_spec

pytestmark = pytest.mark.integration

NS = "default"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetunejob.yaml"


@pytest.fixture(scope="module")
def custom(kube_api, operator):
    return client.CustomObjectsApi(kube_api)


@pytest.fixture(scope="module")
def core(kube_api, operator):
    return client.CoreV1Api(kube_api)


def submit(custom, name: str, **spec_changes) -> dict:
    """kubectl apply of the example under a new name (uid set as the API server would)."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(name=name, namespace=NS, uid=str(uuid.uuid4()))
    doc["spec"].update(spec_changes)
    custom.create_namespaced_custom_object("graft.dev", "v1alpha1", NS, "finetunejobs", doc)
    return doc


def ftj(custom, name: str) -> dict:
    return custom.get_namespaced_custom_object("graft.dev", "v1alpha1", NS, "finetunejobs", name)


def pytorchjobs(custom, name: str) -> list[dict]:
    items = custom.list_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs")["items"]
    return [item for item in items if item["metadata"]["name"] == name]


def events(core, name: str) -> list[tuple[str, str, str]]:
    return [(e.type, e.reason, e.message) for e in core.list_namespaced_event(NS).items
            if e.involved_object.name == name]


def status_of(custom, name: str, **expected):
    """Wait until every expected key of .status has the expected value."""
    def matches():
        status = ftj(custom, name).get("status") or {}
        return status if all(status.get(k) == v for k, v in expected.items()) else None
    return wait_for(matches)


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def test_create_makes_configmap_and_child_owned_by_the_job(custom, core):
    doc = submit(custom, "create-demo")
    child = wait_for(lambda: pytorchjobs(custom, "create-demo"))[0]
    configmap = core.read_namespaced_config_map("create-demo-spec", NS).to_dict()
    expected_cm, expected_child = render(parse_spec({**doc, "metadata": {"name": "create-demo", "namespace": NS}}), "pytorchjob")

    for obj in (child, {"metadata": {"owner_references": configmap["metadata"]["owner_references"]}}):
        refs = obj["metadata"].get("ownerReferences") or obj["metadata"]["owner_references"]
        assert len(refs) == 1 and refs[0]["uid"] == doc["metadata"]["uid"]
        assert refs[0]["kind"] == "FineTuneJob" and refs[0]["controller"] is True
    assert child["spec"] == expected_child["spec"]
    assert configmap["data"] == expected_cm["data"]
    status = status_of(custom, "create-demo", phase="Pending")
    assert status["child"] == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "create-demo"}
    assert ("Normal", "Created", "created ConfigMap create-demo-spec and PyTorchJob create-demo") in events(core, "create-demo")


def kubectl(kube_api, *args: str) -> str:
    """The real kubectl against the emulator (`--validate=false`: the emulator serves no OpenAPI)."""
    result = subprocess.run([venv_tool("kubectl") or "kubectl", *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "KUBECONFIG": str(kube_api.kubeconfig_path)})
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def test_kubectl_apply_of_the_example_creates_its_rendered_child(custom, core, kube_api):
    """What a user types, verbatim: the file as it is in examples/, applied with kubectl."""
    out = kubectl(kube_api, "apply", "--validate=false", "-f", str(EXAMPLE))
    assert "finetunejob.graft.dev/digits-transfer created" in out
    applied = ftj(custom, "digits-transfer")
    child = wait_for(lambda: pytorchjobs(custom, "digits-transfer"))[0]
    _, expected = render(parse_spec(yaml.safe_load(EXAMPLE.read_text())), "pytorchjob")
    assert child["spec"] == expected["spec"]
    assert child["metadata"]["ownerReferences"][0]["uid"] == applied["metadata"]["uid"]
    assert core.read_namespaced_config_map("digits-transfer-spec", NS).data
    status_of(custom, "digits-transfer", phase="Pending")
    listed = json.loads(kubectl(kube_api, "get", "ftj", "-n", NS, "-o", "json"))  # the CRD's short name
    assert "digits-transfer" in [item["metadata"]["name"] for item in listed["items"]]


def test_child_and_pod_status_are_mirrored(custom, core):
    submit(custom, "mirror-demo")
    wait_for(lambda: pytorchjobs(custom, "mirror-demo"))
    running = {"status": {"startTime": "2026-01-01T10:00:00Z", "conditions": [
        {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
        {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "all pods up"},
    ]}}
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", NS, "pytorchjobs", "mirror-demo", running)
    status = status_of(custom, "mirror-demo", phase="Running", startTime="2026-01-01T10:00:00Z")
    assert condition(status, "Running")["message"] == "all pods up"

    # The master pod stuck unschedulable: the reason reaches a status condition.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "mirror-demo-master-0", "namespace": NS,
        "labels": {"graft.dev/job": "mirror-demo", "training.kubeflow.org/replica-type": "master"}},
        "spec": {"containers": [{"name": "pytorch", "image": "trainer"}]},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                   "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}
    core.create_namespaced_pod(NS, pod)
    stuck = wait_for(lambda: any(c["type"] == "PodsReady" and c["status"] == "False"
                                 for c in (ftj(custom, "mirror-demo").get("status") or {}).get("conditions", []))
                     and ftj(custom, "mirror-demo")["status"])
    assert "Insufficient nvidia.com/gpu" in condition(stuck, "PodsReady")["message"]

    # The trainer finished: its termination message carries the summary; restarts are counted.
    summary = {"epoch": 4, "epochs": 4, "val_accuracy": 0.97, "best_metric": "val_accuracy", "best_value": 0.98, "best_epoch": 3}
    finished = {"status": {"phase": "Succeeded", "conditions": [], "containerStatuses": [{
        "name": "pytorch", "image": "trainer", "imageID": "", "ready": False, "restartCount": 1, "state": {"terminated": {"exitCode": 0, "message": json.dumps(summary)}}}]}}
    core.patch_namespaced_pod_status("mirror-demo-master-0", NS, finished)
    done = {"status": {"completionTime": "2026-01-01T10:30:00Z", "conditions": running["status"]["conditions"] + [
        {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}}
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", NS, "pytorchjobs", "mirror-demo", done)
    status = status_of(custom, "mirror-demo", phase="Succeeded", restarts=1, completionTime="2026-01-01T10:30:00Z")
    assert status["bestMetric"] == {"name": "val_accuracy", "value": 0.98, "epoch": 3}
    assert status["progress"]["summary"] == "4/4 epochs" and status["progress"]["valAccuracy"] == 0.97
    reasons = [reason for _, reason, _ in events(core, "mirror-demo")]
    assert reasons[:1] == ["Created"] and {"Running", "Succeeded"} <= set(reasons)


def test_create_handler_twice_never_makes_a_second_child(custom, kube_api):
    submit(custom, "twice-demo")
    wait_for(lambda: pytorchjobs(custom, "twice-demo"))
    stored = status_of(custom, "twice-demo", phase="Pending") and ftj(custom, "twice-demo")
    kube = Kube(kube_api)
    memo = SimpleNamespace(kube=kube, book=StatusBook(kube))
    patch: dict = {}
    create_children(body=copy.deepcopy(stored), memo=memo, patch=patch)
    assert len(pytorchjobs(custom, "twice-demo")) == 1
    assert "already exist and belong to this job" in condition(patch["status"], "ChildCreated")["message"]


def test_invalid_spec_fails_with_event_and_no_child(custom, core):
    submit(custom, "invalid-demo", backbone={"name": "resnet18"})
    status = status_of(custom, "invalid-demo", phase="Failed")
    assert "spec.backbone.name" in condition(status, "Valid")["message"]
    assert any(t == "Warning" and r == "InvalidSpec" and "backbone.name" in m
               for t, r, m in events(core, "invalid-demo"))
    assert pytorchjobs(custom, "invalid-demo") == []
    assert "invalid-demo-spec" not in [cm.metadata.name for cm in core.list_namespaced_config_map(NS).items]


def test_spec_change_of_running_job_is_rejected_but_suspend_propagates(custom, core):
    submit(custom, "change-demo")
    original = wait_for(lambda: pytorchjobs(custom, "change-demo"))[0]
    status_of(custom, "change-demo", phase="Pending")

    custom.patch_namespaced_custom_object("graft.dev", "v1alpha1", NS, "finetunejobs", "change-demo",
                                          {"spec": {"training": {"batchSize": 8}}})
    status = wait_for(lambda: any(c["type"] == "SpecChangeRejected" for c in
                                  (ftj(custom, "change-demo").get("status") or {}).get("conditions", []))
                      and ftj(custom, "change-demo")["status"])
    assert "spec.training.batchSize" in condition(status, "SpecChangeRejected")["message"]
    assert any(t == "Warning" and r == "SpecChangeRejected" for t, r, _ in events(core, "change-demo"))
    assert pytorchjobs(custom, "change-demo")[0]["spec"] == original["spec"]

    custom.patch_namespaced_custom_object("graft.dev", "v1alpha1", NS, "finetunejobs", "change-demo",
                                          {"spec": {"suspend": True}})
    suspended = wait_for(lambda: pytorchjobs(custom, "change-demo")[0]["spec"]["runPolicy"]["suspend"])
    assert suspended is True
    assert ("Normal", "Suspended", "PyTorchJob change-demo suspended") in events(core, "change-demo")
