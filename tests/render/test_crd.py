"""The FineTuneJob CRD generated from the spec model: the API server must accept it (structural,
valid CustomResourceDefinition) and it must accept exactly the documents parse_spec accepts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from graft.crd import finetunejob_crd
from graft.schema_check import CrdSchemas, core_errors, structural_errors
from graft.spec import json_schema, parse_spec
from render_specs import TARGETS, reference_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.y*ml"))


@pytest.fixture(scope="module")
def crd():
    return finetunejob_crd()


@pytest.fixture(scope="module")
def ftj_schema(crd):
    return CrdSchemas([crd])


def _root(crd):
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_crd_is_a_valid_structural_customresourcedefinition(crd):
    assert core_errors(crd) == []
    assert structural_errors(_root(crd)) == []
    assert crd["metadata"]["name"] == "finetunejobs.graft.dev"
    assert crd["spec"]["names"]["shortNames"] == ["ftj"] and crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Backend", "Phase", "Progress", "Accuracy", "Age"]


def test_the_crd_check_would_catch_a_json_schema_keyword(crd):
    """pydantic's `const` is not OpenAPI: kubernetes-validate must refuse it if it ever leaks."""
    broken = copy.deepcopy(crd)
    _root(broken)["properties"]["spec"]["properties"]["backend"]["const"] = "pytorchjob"
    assert any("const" in e for e in core_errors(broken))
    assert structural_errors(_root(broken)) == ["spec.backend: const is not allowed in a CRD schema"]


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


@pytest.mark.parametrize("target", TARGETS)
def test_default_filled_documents_are_accepted(ftj_schema, target):
    document = reference_spec(target).to_document()
    assert ftj_schema.errors(document) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(ftj_schema, path):
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "FineTuneJob":
            parse_spec(document)
            assert ftj_schema.errors(document) == []


def test_nulls_and_int_or_string_as_users_write_them(ftj_schema):
    document = reference_spec("pytorchjob").to_document()
    document["spec"]["kubernetes"]["ttlSecondsAfterFinished"] = None
    document["spec"]["strategy"]["phases"][0]["unfreeze"] = 3
    document["spec"]["strategy"]["phases"][1]["unfreeze"] = "all"
    document["spec"]["backbone"]["options"] = {"dropRate": 0.1, "pretrained": False}
    parse_spec(document)
    assert ftj_schema.errors(document) == []
    document["status"] = {"phase": "Running", "progress": {"summary": "3/5 epochs", "valAccuracy": 0.9}}
    assert ftj_schema.errors(document) == []


def test_unknown_fields_and_bad_values_are_rejected(ftj_schema):
    document = reference_spec("pytorchjob").to_document()
    document["spec"]["training"]["batchsize"] = 8
    document["spec"]["kubernetes"]["cleanPodPolicy"] = "Sometimes"
    document["spec"]["strategy"]["phases"][0]["unfreeze"] = 1.5
    document["status"] = {"phase": "Done"}
    errors = "\n".join(ftj_schema.errors(document))
    assert "spec.training: Additional properties are not allowed ('batchsize'" in errors
    assert "spec.kubernetes.cleanPodPolicy: 'Sometimes' is not one of" in errors
    assert "spec.strategy.phases.0.unfreeze" in errors
    assert "status.phase: 'Done' is not one of" in errors
