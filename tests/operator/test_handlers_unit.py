"""The operator's decisions as plain functions over real dicts (no API, no kopf loop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from graft.operator import status as st
from graft.operator.kube import CHILD_RESOURCES
from graft.operator.rbac import RULES
from graft.operator.reconcile import (
    SUSPEND_PATHS, changed_spec_paths, desired_children, job_from_body, suspend_patch,
)
from graft.operator.why import explain_pending
from graft.spec import SpecError, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetunejob.yaml"


def stored_body(**spec_changes) -> dict:
    """The example as the API server returns it: server metadata, tool annotations, status."""
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"].update(spec_changes)
    body["metadata"].update(uid="1234", resourceVersion="7", generation=1,
                            creationTimestamp="2026-01-01T00:00:00Z",
                            annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                         "team": "vision"})
    body["status"] = {"phase": "Pending"}
    return body


def test_stored_object_validates_and_children_are_owned_and_clean():
    body = stored_body()
    job = job_from_body(body)
    configmap, child = desired_children(body, job)
    for obj in (configmap, child):
        assert obj["metadata"]["namespace"] == "default"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "1234"
        assert obj["metadata"]["labels"]["graft.dev/job"] == "digits-transfer"
    spec_doc = yaml.safe_load(configmap["data"]["spec.yaml"])
    assert spec_doc["metadata"]["annotations"] == {"team": "vision"}  # kubectl's copy is not carried


def test_invalid_stored_object_raises_spec_error_naming_the_field():
    with pytest.raises(SpecError) as err:
        job_from_body(stored_body(backbone={"name": "resnet18"}))
    assert any(p.startswith("spec.backbone.name") for p in err.value.problems)


@pytest.mark.parametrize("backend", sorted(SUSPEND_PATHS))
def test_suspend_patch_hits_the_field_the_renderer_writes(backend):
    body = stored_body(backend=backend, suspend=True)
    child = desired_children(body, job_from_body(body))[1]
    assert child["kind"] in CHILD_RESOURCES
    node, patch = child, suspend_patch(backend, True)
    while isinstance(patch, dict):
        (key, patch), = patch.items()
        node = node[key]
    assert node is True and patch is True


def test_changed_spec_paths_lists_every_leaf():
    old = {"suspend": False, "training": {"batchSize": 64, "seed": 0}}
    new = {"suspend": True, "training": {"batchSize": 8, "seed": 0}, "backend": "rayjob"}
    assert changed_spec_paths(old, new) == ["backend", "suspend", "training.batchSize"]
    assert changed_spec_paths(old, old) == []


def test_pytorchjob_phase_follows_the_newest_true_condition():
    child = {"kind": "PyTorchJob", "status": {"startTime": "t0", "conditions": [
        {"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
        {"type": "Restarting", "status": "True", "reason": "PodFailed"}]}}
    update = st.from_child(child)
    assert update["phase"] == "Running" and update["startTime"] == "t0"
    child["status"]["conditions"].append({"type": "Failed", "status": "True", "message": "OOMKilled"})
    assert st.from_child(child)["phase"] == "Failed"
    assert st.from_child({"kind": "PyTorchJob"})["phase"] == "Pending"


@pytest.mark.parametrize(("deployment", "job_status", "phase"), [
    ("Initializing", "", "Pending"), ("Running", "RUNNING", "Running"),
    ("Complete", "SUCCEEDED", "Succeeded"), ("Complete", "FAILED", "Failed"),
    ("Suspended", "", "Suspended"), ("Failed", "", "Failed"),
])
def test_rayjob_phase(deployment, job_status, phase):
    child = {"kind": "RayJob", "status": {"jobDeploymentStatus": deployment, "jobStatus": job_status,
                                          "startTime": "t0", "endTime": "t1"}}
    update = st.from_child(child)
    assert update["phase"] == phase and update["completionTime"] == "t1"


def test_trainjob_phase_and_completion_time():
    child = {"kind": "TrainJob", "status": {"jobsStatus": [{"name": "node", "active": 2}]}}
    assert st.from_child(child)["phase"] == "Running"
    child["status"]["conditions"] = [{"type": "Complete", "status": "True", "lastTransitionTime": "t9"}]
    update = st.from_child(child)
    assert (update["phase"], update["completionTime"]) == ("Succeeded", "t9")


def test_why_explains_unschedulable_and_image_pull_and_is_silent_when_running():
    pending = {"metadata": {"name": "p0"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}}
    pulling = {"metadata": {"name": "p1"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "pytorch", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}}
    running = {"metadata": {"name": "p2"}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "pytorch", "state": {"running": {}}}]}}
    text = explain_pending([pending, pulling, running])
    assert "pod p0 not scheduled: Unschedulable" in text and "gpusPerNode" in text
    assert "pod p1/pytorch waiting: ImagePullBackOff (not found)" in text
    assert explain_pending([running]) is None
    event = {"type": "Warning", "reason": "FailedMount", "message": "pvc missing", "involvedObject": {"name": "p3"}}
    assert "FailedMount" in explain_pending([{"metadata": {"name": "p3"}, "status": {"phase": "Pending"}}], [event])


def test_pods_give_restarts_and_the_final_summary():
    summary = {"epoch": 5, "epochs": 5, "val_accuracy": 0.91, "val_loss": 0.3, "checkpoint": "/out/step-50"}
    pods = [
        {"status": {"containerStatuses": [{"restartCount": 2, "state": {"terminated": {"message": json.dumps(summary)}}}]}},
        {"status": {"containerStatuses": [{"restartCount": 1, "state": {"terminated": {"message": "OOMKilled"}}}]}},
    ]
    update = st.from_pods(pods, None, "val_accuracy")
    assert update["restarts"] == 3 and update["lastCheckpoint"] == "/out/step-50"
    assert update["progress"] == {"epoch": 5, "epochs": 5, "valAccuracy": 0.91, "valLoss": 0.3, "summary": "5/5 epochs"}
    assert update["bestMetric"] == {"name": "val_accuracy", "value": 0.91, "epoch": 5}


def test_progress_line_parsing():
    assert st.parse_progress_line('graft-progress {"epoch": 1, "epochs": 3}') == {"epoch": 1, "epochs": 3}
    assert st.parse_progress_line("epoch 1 done") is None
    ray_forwarded = '(RayTrainWorker pid=4242, ip=10.0.0.7) graft-progress {"epoch": 2, "epochs": 3}'
    assert st.parse_progress_line(ray_forwarded) == {"epoch": 2, "epochs": 3}
    assert st.parse_progress_line("graft-progress not json") is None


def test_merge_writes_only_changes_and_best_metric_only_improves():
    current = {"phase": "Running", "bestMetric": {"name": "val_loss", "value": 0.2, "epoch": 2},
               "conditions": [{"type": "PodsReady", "status": "True", "reason": "PodsStarted",
                               "message": "no pod is stuck", "lastTransitionTime": "t0"}]}
    assert st.merge(current, {"phase": "Running"}) is None
    same = st.condition(st.PODS_READY, True, "PodsStarted", "no pod is stuck")
    assert st.merge(current, {"conditions": [same]}) is None  # the transition time is kept
    worse = st.merge(current, {"bestMetric": {"name": "val_loss", "value": 0.5, "epoch": 3}, "restarts": 1})
    assert worse["bestMetric"]["value"] == 0.2 and worse["restarts"] == 1
    better = st.merge(current, {"bestMetric": {"name": "val_loss", "value": 0.1, "epoch": 4}})
    assert better["bestMetric"]["value"] == 0.1


def test_rbac_covers_every_child_kind_and_only_verbs_in_use():
    verbs = {(group, resource): set(rule["verbs"]) for rule in RULES
             for group in rule["apiGroups"] for resource in rule["resources"]}
    for group, _, plural in CHILD_RESOURCES.values():
        assert verbs[(group, plural)] == {"get", "list", "watch", "create", "patch"}
    assert verbs[("graft.dev", "finetunejobs/status")] == {"patch"}
    assert all("delete" not in v and "update" not in v for v in verbs.values())


@pytest.mark.parametrize("target, template_path", [
    ("pytorchjob", ("pytorchReplicaSpecs", "Master", "template")),
    ("rayjob", ("submitterPodTemplate",)),
])
def test_progress_is_followed_on_the_pod_whose_log_carries_it(target, template_path):
    """Rank 0's log (PyTorchJob Master; RayJob: the submitter, which tails the Ray driver)."""
    from graft.operator.handlers import is_rank0_running
    from graft.render import render

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"].setdefault("kubernetes", {})["raySubmissionMode"] = "K8sJobMode"
    template = render(parse_spec(doc), target)[1]["spec"]
    for key in template_path:
        template = template[key]
    labels = dict(template["metadata"]["labels"])
    if target == "pytorchjob":  # the training operator adds the replica-type label to its pods
        labels["training.kubeflow.org/replica-type"] = "master"
    assert is_rank0_running(labels=labels, status={"phase": "Running"})
    assert not is_rank0_running(labels={"graft.dev/job": "x"}, status={"phase": "Running"})
