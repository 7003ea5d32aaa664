"""Golden files: what `graft render` prints for one reference spec per target. A change in a
rendered manifest must be deliberate: regenerate with GRAFT_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graft.render import render, render_training_runtime, to_yaml

from render_specs import TARGETS, reference_spec

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("GRAFT_UPDATE_GOLDEN") == "1"


def _compare(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with GRAFT_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} drifted; review, then regenerate with GRAFT_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_manifests_match_golden(target, assert_valid):
    objects = render(reference_spec(target), target)
    assert_valid(objects)
    _compare(f"{target}.yaml", to_yaml(objects))


def test_training_runtime_matches_golden(assert_valid):
    runtime = render_training_runtime("ghcr.io/graft-dev/graft-trainer:0.1.0")
    assert_valid([runtime])
    _compare("clustertrainingruntime.yaml", to_yaml([runtime]))
