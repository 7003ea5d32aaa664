"""Transfer workloads on the vision pair (real digits 0-4 → digits 5-9): pretrained beats
random init, gradual unfreezing with layer decay, augmentation, small imbalanced data from a
CSV manifest. Every run is the real `fit`; the pretrained backbone is the session's source
model (see conftest), never a random init presented as pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from workload_jobs import digits_job
from graft_trainer.loop import Hooks, fit

pytestmark = pytest.mark.slow

PRETRAINED_MARGIN = 0.15  # accuracy points; observed ≈ 0.3 with 100 labelled target images


def test_pretrained_backbone_beats_the_same_architecture_from_random_init(source_weights, tmp_path):
    small = {"data": {"limit": 100}, "strategy": {"phases": [{"name": "head-only", "epochs": 5, "lr": 1.0e-2}]}}
    pretrained = fit(digits_job(tmp_path / "pretrained", source_weights, **small))
    scratch = fit(digits_job(tmp_path / "random-init", None, **small))  # same architecture, random weights
    assert pretrained["best_val_accuracy"] >= scratch["best_val_accuracy"] + PRETRAINED_MARGIN, (pretrained, scratch)


def _block_names(job) -> list[list[str]]:
    """Parameter names (as exported, 'backbone.*') of each unfreezing block, top-down."""
    from graft_trainer.models import build_model

    model = build_model(job, 5)
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in block.params] for block in model.blocks]


def test_gradual_unfreezing_with_layer_decay_adds_one_block_per_epoch_top_down(source_weights, tmp_path):
    job = digits_job(tmp_path / "out", source_weights, data={"limit": 160}, strategy={"phases": [{
        "name": "gradual", "epochs": 3, "lr": 1.0e-2, "unfreeze": 0, "unfreezePerEpoch": 1,
        "layerDecay": {"factor": 0.3}}]})
    snapshots = []
    fit(job, Hooks(on_epoch_end=lambda metrics, saved: snapshots.append(load_file(saved / "model.safetensors"))))
    pretrained = {f"backbone.{k}" if not k.startswith("backbone.") else k: v for k, v in load_file(source_weights).items()}
    blocks = _block_names(job)

    def moved(epoch: int) -> list[bool]:
        return [any(not torch.equal(snapshots[epoch][n], pretrained[n]) for n in block) for block in blocks]

    assert moved(0) == [False] * len(blocks)  # epoch 1: head only
    assert moved(1)[:2] == [True, False] and not any(moved(1)[1:])  # epoch 2: + top block
    assert moved(2)[:3] == [True, True, False] and not any(moved(2)[2:])  # epoch 3: + next block
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_accuracy"] >= 0.8


def test_augmentation_trains_through_the_backbone_and_refuses_the_feature_cache(source_weights, tmp_path):
    augmented = [{"name": "rotation", "degrees": 10}, {"name": "randomResizedCrop", "scale": [0.85, 1.0]}]
    summary = fit(digits_job(tmp_path / "out", source_weights, data={"limit": 200, "augmentations": augmented},
                             strategy={"phases": [{"name": "head-only", "epochs": 3, "lr": 1.0e-2}]}))
    assert "feature_cache" not in summary  # augmented inputs differ every epoch: nothing to cache
    assert summary["best_val_accuracy"] >= 0.8
    assert (tmp_path / "out" / "plot.png").exists() and (tmp_path / "out" / "model" / "model.safetensors").exists()


def test_small_imbalanced_data_from_a_csv_manifest_reports_per_class_metrics(source_weights, tmp_path):
    data = {"format": "csv", "train": "builtin://sklearn-digits?classes=5-9&imbalance=10", "balance": "sampler"}
    summary = fit(digits_job(tmp_path / "out", source_weights, data=data,
                             strategy={"phases": [{"name": "head-only", "epochs": 6, "lr": 1.0e-2}]}))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["classes"] == ["5", "6", "7", "8", "9"]
    confusion = torch.tensor(report["confusion"])
    per_class = confusion.sum(1).tolist()  # validation keeps the long tail: 182 … 18 images per class
    assert per_class[0] >= 8 * per_class[-1]
    assert set(report["precision"]) == set(report["recall"]) == set(report["classes"])
    for i, name in enumerate(report["classes"]):  # per-class figures agree with the confusion matrix
        assert report["recall"][name] == pytest.approx(float(confusion[i, i] / confusion[i].sum()))
        assert report["precision"][name] == pytest.approx(float(confusion[i, i] / confusion[:, i].sum().clamp(min=1)))
    assert summary["best_val_accuracy"] >= 0.85
