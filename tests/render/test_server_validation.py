"""The API server's dry run must itself refuse bad objects, naming the field, or every 'the
server accepts it' assertion elsewhere is worthless."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graft.render import TARGETS, RenderError, render, render_training_runtime
from graft.spec import load_spec
from render_specs import reference_spec

pytestmark = pytest.mark.controlplane


@pytest.fixture()
def pytorchjob():
    return render(reference_spec("pytorchjob"), "pytorchjob")[1]


def test_the_reference_renders_are_accepted(server_errors):
    for target in ("pytorchjob", "rayjob", "trainjob"):
        assert server_errors(render(reference_spec(target), target)) == []


def test_unknown_field_is_named(server_errors, pytorchjob):
    pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    (error,) = server_errors([pytorchjob])
    assert ".spec.pytorchReplicaSpecs.Master.template.spec.containers[name=\"pytorch\"].comand: field not declared" in error


def test_unknown_root_metadata_field_is_named(server_errors, pytorchjob):
    pytorchjob["metadata"]["label"] = {"a": "b"}
    (error,) = server_errors([pytorchjob])
    assert error.startswith("PyTorchJob flowers-resnet:") and ".metadata.label: field not declared" in error


def test_wrong_type_is_named(server_errors, pytorchjob):
    pytorchjob["spec"]["runPolicy"]["backoffLimit"] = "three"
    (error,) = server_errors([pytorchjob])
    assert ".spec.runPolicy.backoffLimit" in error and "expected numeric" in error


def test_int_or_string_rejects_other_types(server_errors, pytorchjob):
    limits = pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["cpu"] = 8  # integers are fine for quantities
    assert server_errors([pytorchjob]) == []
    limits["cpu"] = [8]
    (error,) = server_errors([pytorchjob])
    assert "resources.limits.cpu" in error


def test_bad_enum_is_named(server_errors):
    runtime = render_training_runtime("img")
    runtime["spec"]["podGroupPolicy"] = {"volcano": {"networkTopology": {"mode": "strict"}}}
    (error,) = server_errors([runtime])
    assert "spec.podGroupPolicy.volcano.networkTopology.mode" in error and '"strict"' in error


def test_missing_required_field_is_named(server_errors):
    rayjob = render(reference_spec("rayjob"), "rayjob")[1]
    del rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    (error,) = server_errors([rayjob])
    assert "headGroupSpec.template.spec.containers" in error and "name" in error


def test_core_objects_are_checked_strictly(server_errors):
    configmap = render(reference_spec("pytorchjob"), "pytorchjob")[0]
    assert server_errors([configmap]) == []
    configmap["metadata"]["labelz"] = {}
    (error,) = server_errors([configmap])
    assert ".metadata.labelz: field not declared" in error


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_renders_to_objects_the_server_accepts(example, target, server_errors):
    """What `graft render EXAMPLE --target T | kubectl apply -f -` would send, dry-run; a
    target that cannot express a setting refuses at render time, naming it."""
    if [d.get("kind") for d in yaml.safe_load_all(example.read_text())] != ["FineTuneJob"]:
        return  # examples/<target>.yaml are rendered output, checked in tests/deploy
    try:
        objects = render(load_spec(example), target)
    except RenderError as refused:
        assert "spec." in str(refused)
        return
    assert server_errors(objects) == []
