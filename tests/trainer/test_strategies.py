"""Each strategy trains exactly the parameters it promises, and frozen BatchNorm stays frozen.

Backbones here are tiny and RANDOMLY INITIALISED (timm resnet10t at 16 px, a 2-layer BERT
built from MiniLM's config without its weights): the property tested is which parameters move,
not accuracy. Every run is the real `fit` on real digits / VADER words; the weights after each
epoch are read from the checkpoint that epoch wrote.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from graft_trainer import strategies
from graft_trainer.loop import Hooks, fit
from graft_trainer.models import build_model
from graft_trainer.checkpoint import steps
from trainer_jobs import PYTHON, REPO, digits_doc, job_of, text_doc, trainer_env, write_spec

pytestmark = pytest.mark.slow


def initial_state(job, num_classes: int) -> dict[str, torch.Tensor]:
    """The weights `fit` starts from (it seeds with training.seed before building the model)."""
    from accelerate.utils import set_seed

    set_seed(job.spec.training.seed)
    return {k: v.clone() for k, v in build_model(job, num_classes).state_dict().items()}


def run_and_snapshot(job) -> list[dict[str, torch.Tensor]]:
    """Train; return the full state after every epoch (from that epoch's checkpoint)."""
    snapshots = []
    fit(job, Hooks(on_epoch_end=lambda metrics, ckpt: snapshots.append(load_file(ckpt / "model.safetensors"))))
    return snapshots


def changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, f"no tensors under {prefix}"
    return any(not torch.equal(before[k], after[k]) for k in keys)


def stage_names(job, num_classes=5) -> list[str]:
    return [b.name for b in build_model(job, num_classes).blocks]


def test_resnet_blocks_are_timm_stages_top_down(tmp_path):
    assert stage_names(job_of(digits_doc(tmp_path))) == ["group4", "group3", "group2", "group1", "group0"]


def test_head_only_leaves_backbone_and_its_batchnorm_statistics_untouched(tmp_path):
    job = job_of(digits_doc(tmp_path))
    before = initial_state(job, 5)
    after = run_and_snapshot(job)[-1]
    assert changed(before, after, "head.")
    frozen = [k for k in before if k.startswith("backbone.")]
    assert all(torch.equal(before[k], after[k]) for k in frozen), "a frozen backbone tensor moved"
    assert any(k.endswith("running_mean") for k in frozen)  # BN statistics were among them


def test_unfreeze_last_block_trains_only_the_top_stage(tmp_path):
    job = job_of(digits_doc(tmp_path, strategy={"phases": [{"epochs": 1, "lr": 1e-2, "unfreeze": 1}]}))
    before = initial_state(job, 5)
    after = run_and_snapshot(job)[-1]
    assert changed(before, after, "backbone.layer4.")
    for frozen in ("backbone.layer3.", "backbone.layer2.", "backbone.layer1.", "backbone.conv1."):
        assert not changed(before, after, frozen), frozen


def test_full_fine_tune_trains_every_block(tmp_path):
    job = job_of(digits_doc(tmp_path, strategy={"phases": [{"epochs": 1, "lr": 1e-2, "unfreeze": "all"}]}))
    before = initial_state(job, 5)
    after = run_and_snapshot(job)[-1]
    for prefix in ("head.", "backbone.layer4.", "backbone.layer1.", "backbone.conv1."):
        assert changed(before, after, prefix), prefix


def test_gradual_unfreezing_adds_one_stage_per_epoch_top_down(tmp_path):
    phases = [{"epochs": 3, "lr": 1e-2, "unfreeze": 0, "unfreezePerEpoch": 1}]
    job = job_of(digits_doc(tmp_path, strategy={"phases": phases}))
    before = initial_state(job, 5)
    epoch1, epoch2, epoch3 = run_and_snapshot(job)
    assert changed(before, epoch1, "head.") and not changed(before, epoch1, "backbone.layer4.")
    assert changed(epoch1, epoch2, "backbone.layer4.") and not changed(epoch1, epoch2, "backbone.layer3.")
    assert changed(epoch2, epoch3, "backbone.layer3.") and not changed(epoch2, epoch3, "backbone.layer2.")


def test_layer_decay_gives_each_lower_block_a_smaller_rate(tmp_path):
    phase = {"epochs": 1, "lr": 1e-3, "unfreeze": 3, "layerDecay": {"factor": 0.5}}
    job = job_of(digits_doc(tmp_path, strategy={"phases": [phase]}))
    model = build_model(job, 5)
    groups = strategies.param_groups(model, strategies.stage_at(job, 0, len(model.blocks)))
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("head", 1e-3), ("group4", 5e-4), ("group3", 2.5e-4), ("group2", 1.25e-4)
    ]


def test_frozen_batchnorm_runs_in_eval_mode_while_trainable_batchnorm_trains(tmp_path):
    job = job_of(digits_doc(tmp_path))
    model = build_model(job, 5)
    strategies.apply_freezing(model, 1)
    model.train()
    bn = torch.nn.modules.batchnorm._BatchNorm
    assert all(m.training for m in model.backbone.layer4.modules() if isinstance(m, bn))
    assert not any(m.training for m in model.backbone.layer1.modules() if isinstance(m, bn))
    assert model.head.training


def test_text_partial_fine_tune_trains_top_layer_only(tmp_path):
    """MiniLM's architecture with 2 layers, RANDOMLY INITIALISED (config only, no weights)."""
    doc = text_doc(
        tmp_path,
        backbone={"options": {"numHiddenLayers": 2}},
        data={"limit": 64},
        strategy={"phases": [{"epochs": 1, "lr": 1e-3, "unfreeze": 1}]},
    )
    job = job_of(doc)
    before = initial_state(job, 2)
    after = run_and_snapshot(job)[-1]
    assert changed(before, after, "backbone.encoder.layer.1.")
    assert not changed(before, after, "backbone.encoder.layer.0.")
    assert not changed(before, after, "backbone.embeddings.")


def test_early_stopping_ends_a_plateaued_phase_and_moves_on_to_the_next(tmp_path):
    phases = [{"name": "plateau", "epochs": 4, "lr": 1e-12}, {"name": "next", "epochs": 1, "lr": 1e-2}]
    job = job_of(digits_doc(tmp_path, strategy={"phases": phases},
                            training={"earlyStopping": {"metric": "val_accuracy", "patience": 1}}))
    summary = fit(job)
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["phase"]) for m in history] == [(1, "plateau"), (2, "plateau"), (5, "next")]
    assert summary["epochs_run"] == 3


def test_bf16_mixed_precision_trains(tmp_path):
    """In its own process: Accelerate fixes the precision of a process at its first Accelerator."""
    doc = digits_doc(tmp_path, training={"precision": "bf16"},
                     strategy={"phases": [{"epochs": 1, "lr": 1e-2, "unfreeze": 1}]})
    before = initial_state(job_of(doc), 5)
    subprocess.run([PYTHON, "-m", "graft_trainer", str(write_spec(doc, tmp_path / "bf16.yaml"))],
                   cwd=REPO, env=trainer_env(), check=True, capture_output=True, timeout=300)
    after = load_file(steps(tmp_path / "out" / "checkpoints")[0] / "model.safetensors")
    assert after["head.0.weight"].dtype == torch.float32  # autocast: weights stay fp32
    assert changed(before, after, "head.") and changed(before, after, "backbone.layer4.")
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))
