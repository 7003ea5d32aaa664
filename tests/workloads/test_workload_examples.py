"""The workload examples are valid specs, chained to the source job that pretrains their
backbone, and say in their header where the weights come from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graft.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKLOADS = [
    "feature-extraction", "feature-extraction-uncached", "gradual-unfreezing", "augmentation",
    "domain-adaptation-dann", "domain-adaptation-source-only", "small-data-imagefolder", "small-data-csv",
]


@pytest.mark.parametrize("name", WORKLOADS)
def test_example_is_valid_and_starts_from_the_source_jobs_export(name):
    path = EXAMPLES / f"{name}.yaml"
    job = load_spec(path)
    source = yaml.safe_load((EXAMPLES / "digits-source.yaml").read_text())
    header = path.read_text().split("apiVersion:")[0]
    assert f"graft run examples/{name}.yaml --nproc 2" in header
    assert "digits-source.yaml" in header and "REAL" in header  # weights' origin, stated
    assert job.spec.backbone.name == source["spec"]["backbone"]["name"]
    assert job.spec.backbone.weights == f"{source['spec']['output']['dir']}/model/model.safetensors"
    assert job.spec.output.dir == f"output/{name}"


def test_dann_example_and_its_baseline_differ_only_in_adaptation():
    dann = load_spec(EXAMPLES / "domain-adaptation-dann.yaml").spec
    baseline = load_spec(EXAMPLES / "domain-adaptation-source-only.yaml").spec
    assert dann.strategy.domain_adaptation is not None and baseline.strategy.domain_adaptation is None
    assert dann.data == baseline.data and dann.strategy.phases == baseline.strategy.phases
