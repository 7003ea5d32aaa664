"""Domain adaptation on a real shifted pair: the real digits 5-9 (labelled source) and the same
scans under a synthetic sensor shift (lighter background, strong pixel noise; unlabelled for
training, labels used only to measure target accuracy). DANN must beat the source-only run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workload_jobs import digits_job
from graft.spec import DomainAdaptation
from graft_trainer.dann import GradientReversal, reversal_weight
from graft_trainer.loop import fit

DANN_MARGIN = 0.10  # target accuracy points; observed ≈ 0.2 on this seed


def test_gradient_reversal_flips_and_scales_the_gradient_only():
    features = torch.ones(3, 2, requires_grad=True)
    out = GradientReversal.apply(features, 0.4)
    out.sum().backward()
    assert torch.equal(out, features) and torch.allclose(features.grad, torch.full((3, 2), -0.4))


def test_lambda_schedule_rises_from_zero_to_lambda_max():
    config = DomainAdaptation(lambda_max=0.5, gamma=10.0)
    assert reversal_weight(0.0, config) == 0.0
    assert math.isclose(reversal_weight(1.0, config), 0.5 * (2 / (1 + math.exp(-10)) - 1))
    assert reversal_weight(0.1, config) < reversal_weight(0.5, config) < 0.5


@pytest.mark.slow
def test_dann_beats_source_only_on_the_shifted_target(source_weights, tmp_path):
    common = {
        "data": {"target": "builtin://sklearn-digits?classes=5-9&shift=noisy", "limit": 300},
        "strategy": {"phases": [{"name": "head-only", "epochs": 1, "lr": 1.0e-2},
                                {"name": "adapt", "epochs": 3, "lr": 1.0e-3, "unfreeze": "all"}]},
    }
    source_only = fit(digits_job(tmp_path / "source-only", source_weights, **common))
    common["strategy"]["domainAdaptation"] = {"hiddenSize": 64, "lambdaMax": 0.5}
    adapted = fit(digits_job(tmp_path / "dann", source_weights, **common))

    assert source_only["adaptation"] == "none" and adapted["adaptation"] == "dann"
    assert adapted["target_accuracy"] >= source_only["target_accuracy"] + DANN_MARGIN, (source_only, adapted)
    assert adapted["best_val_accuracy"] >= 0.85  # adapting did not cost the source task
    history = [json.loads(line) for line in (tmp_path / "dann" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["reversal_weight"] == 0.0 and 0 < history[-1]["reversal_weight"] <= 0.5
    assert all("target_accuracy" in m for m in history)
