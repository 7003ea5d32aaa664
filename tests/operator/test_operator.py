"""The operator as a real process (`python -m graft.operator --standalone`, kopf clusterwide)
on the real control plane, as the chart's ServiceAccount with the chart's RBAC. The API server
validates every FineTuneJob and child against the real CRDs, assigns uids and runs the garbage
collector; no training operator runs here (tests/controllers runs it), so the tests write the
PyTorchJob's and pods' status the way it and the kubelet would, through the status
subresources. Each test has its own namespace."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from graft.operator.book import StatusBook
from graft.operator.handlers import create_children
from graft.operator.kube import Kube
from graft.render import render
from graft.spec import parse_spec
from tools import wait_for

pytestmark = pytest.mark.controlplane

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetunejob.yaml"


@pytest.fixture
def kube(kube_api, operator, namespace):
    return SimpleNamespace(custom=client.CustomObjectsApi(kube_api), core=client.CoreV1Api(kube_api), ns=namespace)


def submit(kube, name: str, **spec_changes) -> dict:
    """What `kubectl apply` of the example under a new name sends; the server's answer."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec_changes)
    return kube.custom.create_namespaced_custom_object("graft.dev", "v1alpha1", kube.ns, "finetunejobs", doc)


def ftj(kube, name: str) -> dict:
    return kube.custom.get_namespaced_custom_object("graft.dev", "v1alpha1", kube.ns, "finetunejobs", name)


def pytorchjobs(kube, name: str) -> list[dict]:
    items = kube.custom.list_namespaced_custom_object("kubeflow.org", "v1", kube.ns, "pytorchjobs")["items"]
    return [item for item in items if item["metadata"]["name"] == name]


def events(kube, name: str) -> list[tuple[str, str, str]]:
    """The Events on a job in the order they were written. The server lists them by name and
    their timestamps have one-second resolution, so etcd's revision (the resourceVersion of
    each create) gives the order."""
    mine = [e for e in kube.core.list_namespaced_event(kube.ns).items if e.involved_object.name == name]
    return [(e.type, e.reason, e.message) for e in sorted(mine, key=lambda e: int(e.metadata.resource_version))]


def status_of(kube, name: str, **expected):
    """Wait until every expected key of .status has the expected value."""
    def matches():
        status = ftj(kube, name).get("status") or {}
        return status if all(status.get(k) == v for k, v in expected.items()) else None
    return wait_for(matches)


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def patch_child_status(kube, name: str, status: dict) -> None:
    """The training operator's write: PyTorchJob status through its status subresource."""
    kube.custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", kube.ns, "pytorchjobs", name,
                                                      {"status": status})


def test_create_makes_configmap_and_child_owned_by_the_job(kube):
    doc = submit(kube, "create-demo")
    child = wait_for(lambda: pytorchjobs(kube, "create-demo"))[0]
    configmap = kube.core.read_namespaced_config_map("create-demo-spec", kube.ns).to_dict()
    expected_cm, expected_child = render(parse_spec({**doc, "metadata": {"name": "create-demo",
                                                                         "namespace": kube.ns}}), "pytorchjob")

    for obj in (child, {"metadata": {"owner_references": configmap["metadata"]["owner_references"]}}):
        refs = obj["metadata"].get("ownerReferences") or obj["metadata"]["owner_references"]
        assert len(refs) == 1 and refs[0]["uid"] == doc["metadata"]["uid"]
        assert refs[0]["kind"] == "FineTuneJob" and refs[0]["controller"] is True
    assert child["spec"] == expected_child["spec"]
    assert configmap["data"] == expected_cm["data"]
    # the create handler writes the status just after it made the child
    status = status_of(kube, "create-demo", phase="Pending",
                       child={"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "create-demo"})
    assert status["child"] == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "create-demo"}
    assert ("Normal", "Created", "created ConfigMap create-demo-spec and PyTorchJob create-demo") in events(kube, "create-demo")


def test_kubectl_apply_of_the_example_is_validated_by_the_server_and_makes_its_child(control_plane, kube_api, operator,
                                                                                     operator_user):
    """What a user types, verbatim: the file as it is in examples/, applied with kubectl's
    default (strict, server-side) validation; then `kubectl get ftj` as a person reads it."""
    kube = SimpleNamespace(custom=client.CustomObjectsApi(kube_api), core=client.CoreV1Api(kube_api), ns="default")
    out = control_plane.kubectl("apply", "-f", str(EXAMPLE)).stdout
    assert "finetunejob.graft.dev/digits-transfer created" in out
    applied = ftj(kube, "digits-transfer")
    child = wait_for(lambda: pytorchjobs(kube, "digits-transfer"))[0]
    _, expected = render(parse_spec(yaml.safe_load(EXAMPLE.read_text())), "pytorchjob")
    assert child["spec"] == expected["spec"]
    assert child["metadata"]["ownerReferences"][0]["uid"] == applied["metadata"]["uid"]
    assert kube.core.read_namespaced_config_map("digits-transfer-spec", "default").data
    status_of(kube, "digits-transfer", phase="Pending")
    table = control_plane.kubectl("get", "ftj", "-n", "default").stdout.splitlines()  # server-side table
    assert table[0].split() == ["NAME", "BACKEND", "PHASE", "PROGRESS", "ACCURACY", "AGE"]
    assert table[1].split()[:3] == ["digits-transfer", "pytorchjob", "Pending"]
    shown = yaml.safe_load(control_plane.kubectl("get", "ftj", "digits-transfer", "-n", "default", "-o", "yaml").stdout)
    assert shown["status"]["phase"] == "Pending"
    assert shown["status"]["child"]["kind"] == "PyTorchJob"
    # The status was written by the operator's account, through the status subresource (its
    # other patches of the object are kopf's bookkeeping annotations).
    writes = [e for e in control_plane.audit_events() if e["user"]["username"] == operator_user
              and (e.get("objectRef") or {}).get("name") == "digits-transfer"
              and (e.get("objectRef") or {}).get("resource") == "finetunejobs" and e["verb"] == "patch"]
    assert any(e["objectRef"].get("subresource") == "status" and e["responseStatus"]["code"] == 200
               for e in writes)
    control_plane.kubectl("delete", "-f", str(EXAMPLE), "--wait=true")


@pytest.mark.parametrize(("change", "named"), [
    ({"trainng": {"batchSize": 8}}, 'unknown field "spec.trainng"'),
    ({"training": {"precision": "fp64"}}, "spec.training.precision"),
    ({"strategy": {"phases": [{"name": "head", "epochs": 1, "lr": 0.001, "unfreeze": "some"}]}},
     "spec.strategy.phases[0].unfreeze"),
], ids=["unknown-field", "bad-enum", "cel-rule"])
def test_the_api_server_refuses_an_invalid_finetunejob_naming_the_field(control_plane, namespace, tmp_path,
                                                                       change, named):
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": "refused", "namespace": namespace}
    doc["spec"].update(change)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = control_plane.kubectl("apply", "-f", str(path), check=False)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert control_plane.kubectl("get", "ftj", "-n", namespace, "-o", "name").stdout == ""


def test_the_operator_account_cannot_do_what_it_has_no_business_doing(control_plane, operator_user):
    def can(*args: str) -> bool:
        result = control_plane.kubectl("auth", "can-i", *args, f"--as={operator_user}", check=False)
        return result.stdout.strip() == "yes"

    assert can("create", "pytorchjobs.kubeflow.org", "-n", "default")
    assert can("patch", "finetunejobs.graft.dev", "--subresource=status", "-n", "default")
    assert not can("get", "secrets", "-n", "default")
    assert not can("delete", "namespaces")
    assert not can("create", "pods", "-n", "default")
    assert not can("update", "finetunejobs.graft.dev", "-n", "default")


def test_deleting_the_finetunejob_deletes_its_children_by_garbage_collection(kube):
    submit(kube, "gc-demo")
    wait_for(lambda: pytorchjobs(kube, "gc-demo"))
    kube.custom.delete_namespaced_custom_object("graft.dev", "v1alpha1", kube.ns, "finetunejobs", "gc-demo")
    wait_for(lambda: not pytorchjobs(kube, "gc-demo"))

    def configmap_gone():
        try:
            kube.core.read_namespaced_config_map("gc-demo-spec", kube.ns)
        except ApiException as exc:
            return exc.status == 404
        return False
    wait_for(configmap_gone)


def test_child_and_pod_status_are_mirrored(kube, node):
    submit(kube, "mirror-demo")
    wait_for(lambda: pytorchjobs(kube, "mirror-demo"))
    running = {"status": {"startTime": "2026-01-01T10:00:00Z", "conditions": [
        {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
        {"type": "Running", "status": "True", "reason": "PyTorchJobRunning", "message": "all pods up"},
    ]}}
    patch_child_status(kube, "mirror-demo", running["status"])
    status = status_of(kube, "mirror-demo", phase="Running", startTime="2026-01-01T10:00:00Z")
    assert condition(status, "Running")["message"] == "all pods up"

    # The master pod asks for a GPU no node has: the real scheduler's reason reaches a condition.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "mirror-demo-master-0",
        "labels": {"graft.dev/job": "mirror-demo", "training.kubeflow.org/replica-type": "master"}},
        "spec": {"containers": [{"name": "pytorch", "image": "trainer", "command": ["true"],
                                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    kube.core.create_namespaced_pod(kube.ns, pod)
    stuck = wait_for(lambda: any(c["type"] == "PodsReady" and c["status"] == "False"
                                 for c in (ftj(kube, "mirror-demo").get("status") or {}).get("conditions", []))
                     and ftj(kube, "mirror-demo")["status"])
    assert "Insufficient nvidia.com/gpu" in condition(stuck, "PodsReady")["message"]

    # The trainer finished: its termination message carries the summary; restarts are counted.
    summary = {"epoch": 4, "epochs": 4, "val_accuracy": 0.97, "best_metric": "val_accuracy", "best_value": 0.98, "best_epoch": 3}
    finished = {"status": {"phase": "Succeeded", "conditions": [], "containerStatuses": [{
        "name": "pytorch", "image": "trainer", "imageID": "", "ready": False, "restartCount": 1, "state": {"terminated": {"exitCode": 0, "message": json.dumps(summary)}}}]}}
    kube.core.patch_namespaced_pod_status("mirror-demo-master-0", kube.ns, finished)
    done = {"status": {"completionTime": "2026-01-01T10:30:00Z", "conditions": running["status"]["conditions"] + [
        {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}}
    patch_child_status(kube, "mirror-demo", done["status"])
    status = status_of(kube, "mirror-demo", phase="Succeeded", restarts=1, completionTime="2026-01-01T10:30:00Z")
    assert status["bestMetric"] == {"name": "val_accuracy", "value": 0.98, "epoch": 3}
    assert status["progress"]["summary"] == "4/4 epochs" and status["progress"]["valAccuracy"] == 0.97
    reasons = [reason for _, reason, _ in events(kube, "mirror-demo")]
    assert reasons[:1] == ["Created"] and {"Running", "Succeeded"} <= set(reasons)


def test_create_handler_twice_never_makes_a_second_child(kube, kube_api):
    submit(kube, "twice-demo")
    wait_for(lambda: pytorchjobs(kube, "twice-demo"))
    stored = status_of(kube, "twice-demo", phase="Pending") and ftj(kube, "twice-demo")
    operator_kube = Kube(kube_api)
    memo = SimpleNamespace(kube=operator_kube, book=StatusBook(operator_kube))
    create_children(body=copy.deepcopy(stored), memo=memo)
    assert len(pytorchjobs(kube, "twice-demo")) == 1
    status = ftj(kube, "twice-demo")["status"]
    assert "already exist and belong to this job" in condition(status, "ChildCreated")["message"]


def test_invalid_spec_fails_with_event_and_no_child(kube):
    submit(kube, "invalid-demo", backbone={"name": "resnet18"})
    status = status_of(kube, "invalid-demo", phase="Failed")
    assert "spec.backbone.name" in condition(status, "Valid")["message"]
    assert any(t == "Warning" and r == "InvalidSpec" and "backbone.name" in m
               for t, r, m in events(kube, "invalid-demo"))
    assert pytorchjobs(kube, "invalid-demo") == []
    assert "invalid-demo-spec" not in [cm.metadata.name for cm in kube.core.list_namespaced_config_map(kube.ns).items]


def test_spec_change_of_running_job_is_rejected_but_suspend_propagates(kube):
    submit(kube, "change-demo")
    original = wait_for(lambda: pytorchjobs(kube, "change-demo"))[0]
    status_of(kube, "change-demo", phase="Pending")

    kube.custom.patch_namespaced_custom_object("graft.dev", "v1alpha1", kube.ns, "finetunejobs", "change-demo",
                                               {"spec": {"training": {"batchSize": 8}}})
    status = wait_for(lambda: any(c["type"] == "SpecChangeRejected" for c in
                                  (ftj(kube, "change-demo").get("status") or {}).get("conditions", []))
                      and ftj(kube, "change-demo")["status"])
    assert "spec.training.batchSize" in condition(status, "SpecChangeRejected")["message"]
    assert any(t == "Warning" and r == "SpecChangeRejected" for t, r, _ in events(kube, "change-demo"))
    assert pytorchjobs(kube, "change-demo")[0]["spec"] == original["spec"]

    kube.custom.patch_namespaced_custom_object("graft.dev", "v1alpha1", kube.ns, "finetunejobs", "change-demo",
                                               {"spec": {"suspend": True}})
    suspended = wait_for(lambda: pytorchjobs(kube, "change-demo")[0]["spec"]["runPolicy"]["suspend"])
    assert suspended is True
    # the event follows the child's patch: wait for it rather than race it
    wait_for(lambda: ("Normal", "Suspended", "PyTorchJob change-demo suspended") in events(kube, "change-demo"))


def test_a_child_the_api_server_refuses_fails_the_job_with_the_servers_reason(kube, control_plane):
    """A cluster policy (a real ValidatingAdmissionPolicy, CEL in the API server) refuses
    PyTorchJobs in this namespace: the same child would be refused on every retry, so the job
    fails at once, saying what the server said, instead of retrying without a word."""
    name = f"no-pytorchjobs-{kube.ns}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["pytorchjobs"]}]},
                 "validations": [{"expression": "false", "message": "PyTorchJobs are not allowed in this namespace"}]},
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": kube.ns}}}},
    }
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([policy, binding]))
    try:
        # the policy is in force once a direct create is refused (admission caches it)
        def refused() -> bool:
            child = render(parse_spec(yaml.safe_load(EXAMPLE.read_text())), "pytorchjob")[1]
            child["metadata"] = {"name": "probe"}
            try:
                kube.custom.create_namespaced_custom_object("kubeflow.org", "v1", kube.ns, "pytorchjobs", child,
                                                            dry_run="All")
            except ApiException as exc:
                return "not allowed in this namespace" in (exc.body or "")
            return False
        wait_for(refused)
        submit(kube, "refused-demo")
        status = status_of(kube, "refused-demo", phase="Failed")
        created = condition(status, "ChildCreated")
        assert created["status"] == "False" and created["reason"] == "ChildRefused"
        assert "PyTorchJobs are not allowed in this namespace" in status["message"]
        assert "PyTorchJob" in status["message"] and "refused-demo" in status["message"]
        assert pytorchjobs(kube, "refused-demo") == []
        wait_for(lambda: any(t == "Warning" and r == "ChildRefused" for t, r, _ in events(kube, "refused-demo")))
    finally:
        control_plane.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
                              "--ignore-not-found")
