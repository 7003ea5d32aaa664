"""Feature extraction on a pretrained backbone, with and without the feature cache.

The backbone is the session's source model (resnet10t trained on real digits 0-4); the task
is digits 5-9. Cached and uncached runs must reach the same validation accuracy, and a
second cached run must reuse the stored features without one backbone forward pass.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from workload_jobs import digits_job
from graft_trainer.loop import fit

pytestmark = pytest.mark.slow

ACCURACY_TOLERANCE = 0.01  # cached and uncached see identical features; only float noise differs
ACCURACY_FLOOR = 0.85  # linear head on 0-4 features, 3 epochs on digits 5-9 (random init: far lower)


def test_cached_head_training_matches_uncached_and_a_second_run_reuses_the_cache(source_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path / "cache"))  # start from an empty feature cache
    uncached = fit(digits_job(tmp_path / "uncached", source_weights, strategy={"cacheFeatures": "never"}))
    first = fit(digits_job(tmp_path / "cached", source_weights, strategy={"cacheFeatures": "always"}))
    second = fit(digits_job(tmp_path / "reused", source_weights, strategy={"cacheFeatures": "auto"}))

    assert "feature_cache" not in uncached
    assert uncached["val_accuracy"] >= ACCURACY_FLOOR
    assert abs(first["val_accuracy"] - uncached["val_accuracy"]) <= ACCURACY_TOLERANCE
    assert abs(second["val_accuracy"] - uncached["val_accuracy"]) <= ACCURACY_TOLERANCE

    filled, reused = first["feature_cache"], second["feature_cache"]
    assert not any(s["hit"] for s in filled["splits"].values())
    assert filled["backbone_forwards"] > 0  # one pass over train + validation, not one per epoch
    assert all(s["hit"] for s in reused["splits"].values())
    assert reused["backbone_forwards"] == 0  # the whole second run never touched the backbone
    assert {s["key"] for s in reused["splits"].values()} == {s["key"] for s in filled["splits"].values()}


def test_cached_run_writes_what_an_uncached_run_writes_and_keeps_the_backbone(source_weights, tmp_path):
    summary = fit(digits_job(tmp_path / "out", source_weights))  # cacheFeatures: auto
    out = tmp_path / "out"
    assert summary["feature_cache"]["splits"]["train"]["path"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert (out / "plot.png").stat().st_size > 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    report = json.loads((out / "report.json").read_text())
    params = next(iter(report["params"].values()))  # the one phase's parameter summary
    assert 0 < params["trainable"] < params["frozen"]

    exported, pretrained = load_file(out / "model" / "model.safetensors"), load_file(source_weights)
    backbone = {k: v for k, v in exported.items() if k.startswith("backbone.")}
    assert backbone, "the exported model must carry its backbone, not only the cached head"
    assert all(torch.equal(v, pretrained[k]) for k, v in backbone.items())  # frozen: unchanged


def test_changed_weights_or_data_miss_the_cache(source_weights, tmp_path):
    """The key covers the weights file's content and the exact samples, not just names."""
    base = fit(digits_job(tmp_path / "a", source_weights))
    fewer = fit(digits_job(tmp_path / "b", source_weights, data={"limit": 100}))
    altered = tmp_path / "altered.safetensors"
    state = load_file(source_weights)
    name = next(k for k in state if k.startswith("backbone.") and state[k].is_floating_point())
    state[name] = state[name] + 1e-3
    from safetensors.torch import save_file

    save_file(state, altered)
    other = fit(digits_job(tmp_path / "c", altered))
    keys = lambda s: s["feature_cache"]["splits"]["train"]["key"]
    assert len({keys(base), keys(fewer), keys(other)}) == 3
    assert not other["feature_cache"]["splits"]["validation"]["hit"]
    assert fewer["feature_cache"]["splits"]["validation"]["hit"]  # validation samples did not change

    # weights re-exported in place (same path, new bytes): the remembered content hash must not hold
    state[name] = state[name] + 1e-3
    save_file(state, altered)
    rewritten = fit(digits_job(tmp_path / "d", altered))
    assert keys(rewritten) not in {keys(base), keys(other)}
