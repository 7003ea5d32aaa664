"""The strict checker must itself fail on bad objects, naming the path, or every 'passes the
CRD schema' assertion elsewhere is worthless."""

from __future__ import annotations

import pytest

from graft.render import render, render_training_runtime
from graft.schema_check import core_errors
from render_specs import reference_spec


@pytest.fixture()
def pytorchjob():
    return render(reference_spec("pytorchjob"), "pytorchjob")[1]


def test_unknown_field_is_named(crd_schemas, pytorchjob):
    pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    (error,) = crd_schemas.errors(pytorchjob)
    assert "spec.pytorchReplicaSpecs.Master.template.spec.containers.0" in error and "'comand'" in error


def test_unknown_root_metadata_field_is_named(crd_schemas, pytorchjob):
    pytorchjob["metadata"]["label"] = {"a": "b"}
    assert crd_schemas.errors(pytorchjob) == [
        "PyTorchJob flowers-resnet: metadata: Additional properties are not allowed ('label' was unexpected)"
    ]


def test_wrong_type_is_named(crd_schemas, pytorchjob):
    pytorchjob["spec"]["runPolicy"]["backoffLimit"] = "three"
    assert crd_schemas.errors(pytorchjob) == [
        "PyTorchJob flowers-resnet: spec.runPolicy.backoffLimit: 'three' is not of type 'integer'"
    ]


def test_int_or_string_rejects_other_types(crd_schemas, pytorchjob):
    limits = pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["cpu"] = 8  # integers are fine for quantities
    assert crd_schemas.errors(pytorchjob) == []
    limits["cpu"] = [8]
    (error,) = crd_schemas.errors(pytorchjob)
    assert "resources.limits.cpu" in error


def test_bad_enum_is_named(crd_schemas):
    runtime = render_training_runtime("img")
    runtime["spec"]["podGroupPolicy"] = {"volcano": {"networkTopology": {"mode": "strict"}}}
    (error,) = crd_schemas.errors(runtime)
    assert "spec.podGroupPolicy.volcano.networkTopology.mode" in error and "'strict' is not one of" in error


def test_missing_required_field_is_named(crd_schemas):
    rayjob = render(reference_spec("rayjob"), "rayjob")[1]
    del rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    (error,) = crd_schemas.errors(rayjob)
    assert "headGroupSpec.template.spec.containers.0: 'name' is a required property" in error


def test_unknown_kind_is_an_error(crd_schemas):
    assert "no CRD loaded" in crd_schemas.errors({"apiVersion": "kubeflow.org/v1", "kind": "MPIJob"})[0]


def test_core_checker_is_strict():
    configmap = render(reference_spec("pytorchjob"), "pytorchjob")[0]
    assert core_errors(configmap) == []
    configmap["metadata"]["labelz"] = {}
    assert "labelz" in core_errors(configmap)[0]
    assert "no Kubernetes" in core_errors({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob"})[0]
