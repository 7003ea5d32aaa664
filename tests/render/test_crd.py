"""The FineTuneJob CRD generated from the spec model: the real API server must accept it
(structural, valid, CEL rules within budget) and, serving it, accept exactly the documents
parse_spec accepts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from graft.crd import finetunejob_crd
from graft.spec import json_schema, parse_spec
from render_specs import TARGETS, reference_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.y*ml"))


@pytest.fixture(scope="module")
def crd():
    return finetunejob_crd()


def _status_errors(control_plane, namespace, document) -> list[str]:
    """Whether the server accepts `document`'s status: the object is created, then its status
    written (dry run) through the status subresource, which is where the status schema applies."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(config.new_client_from_config(str(control_plane.kubeconfig)))
    body = {k: v for k, v in document.items() if k != "status"}
    body["metadata"] = {"name": document["metadata"]["name"]}
    custom.create_namespaced_custom_object("graft.dev", "v1alpha1", namespace, "finetunejobs", body)
    try:
        custom.patch_namespaced_custom_object_status("graft.dev", "v1alpha1", namespace, "finetunejobs",
                                                     body["metadata"]["name"], {"status": document["status"]},
                                                     dry_run="All")
    except ApiException as exc:
        return [exc.body]
    return []


def _root(crd):
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.controlplane
def test_crd_is_a_valid_structural_customresourcedefinition(crd, server_errors):
    assert server_errors([crd]) == []
    assert crd["metadata"]["name"] == "finetunejobs.graft.dev"
    assert crd["spec"]["names"]["shortNames"] == ["ftj"] and crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Backend", "Phase", "Progress", "Accuracy", "Age"]


@pytest.mark.controlplane
def test_the_server_would_refuse_a_json_schema_keyword_in_the_crd(crd, server_errors):
    """pydantic's `const` is not OpenAPI: the API server refuses the CRD if it ever leaks."""
    broken = copy.deepcopy(crd)
    _root(broken)["properties"]["spec"]["properties"]["backend"]["const"] = "pytorchjob"
    (error,) = server_errors([broken])
    assert "const" in error


def test_preserve_unknown_fields_only_on_backbone_options(crd):
    found = []

    def walk(node, path):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(path)
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(_root(crd), "")
    assert found == [".spec.backbone.options"]


def test_every_model_field_is_in_the_crd(crd):
    source = json_schema()
    missing = []

    def walk(pyd, ours, path):
        if "$ref" in pyd:
            pyd = source["$defs"][pyd["$ref"].rsplit("/", 1)[-1]]
        for branch in pyd.get("anyOf", []):
            walk(branch, ours, path)
        for name, sub in pyd.get("properties", {}).items():
            if name not in ours.get("properties", {}):
                missing.append(f"{path}.{name}")
            else:
                walk(sub, ours["properties"][name], f"{path}.{name}")
        if isinstance(pyd.get("items"), dict) and "items" in ours:
            walk(pyd["items"], ours["items"], f"{path}[]")

    walk(source["properties"]["spec"], _root(crd)["properties"]["spec"], "spec")
    assert missing == []


@pytest.mark.controlplane
@pytest.mark.parametrize("target", TARGETS)
def test_default_filled_documents_are_accepted(server_errors, target):
    document = reference_spec(target).to_document()
    assert server_errors([document]) == []


@pytest.mark.controlplane
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(server_errors, path):
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "FineTuneJob":
            parse_spec(document)
            assert server_errors([document]) == []


@pytest.mark.controlplane
def test_nulls_and_int_or_string_as_users_write_them(server_errors, control_plane, namespace):
    document = reference_spec("pytorchjob").to_document()
    document["spec"]["kubernetes"]["ttlSecondsAfterFinished"] = None
    document["spec"]["strategy"]["phases"][0]["unfreeze"] = 3
    document["spec"]["strategy"]["phases"][1]["unfreeze"] = "all"
    document["spec"]["backbone"]["options"] = {"dropRate": 0.1, "pretrained": False}
    parse_spec(document)
    assert server_errors([document]) == []
    document["status"] = {"phase": "Running", "progress": {"summary": "3/5 epochs", "valAccuracy": 0.9}}
    assert _status_errors(control_plane, namespace, document) == []


@pytest.mark.controlplane
def test_unknown_fields_and_bad_values_are_rejected(server_errors, control_plane, namespace):
    document = reference_spec("pytorchjob").to_document()
    for change, named in (
        (lambda d: d["spec"]["training"].update(batchsize=8), ".spec.training.batchsize: field not declared"),
        (lambda d: d["spec"]["kubernetes"].update(cleanPodPolicy="Sometimes"), "spec.kubernetes.cleanPodPolicy"),
        (lambda d: d["spec"]["strategy"]["phases"][0].update(unfreeze=1.5), "spec.strategy.phases[0].unfreeze"),
        # the child would carry it into a pod's limits, which the server refuses: refused at the door
        (lambda d: d["spec"]["resources"].update(memory="lots"), "spec.resources.memory"),
    ):
        broken = copy.deepcopy(document)
        change(broken)
        (error,) = server_errors([broken])
        assert named in error, error
    document["status"] = {"phase": "Done"}
    (error,) = _status_errors(control_plane, namespace, document)
    assert "status.phase" in error and "Done" in error
