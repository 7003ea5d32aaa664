"""The strategy as phases: which blocks train in each epoch, at which learning rates.

A *stage* is a stretch of epochs with the same trainable blocks. The optimizer and scheduler
are rebuilt at the start of every stage (every phase; every epoch of gradual unfreezing, as
ULMFiT/fastai do), so Adam never carries moments of a previous phase's LR into the next one,
and the schedule (warmup, decay) spans the rest of the phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graft.spec import FineTuneJob, Phase, Training
from graft_trainer.models import GraftModel


@dataclass(frozen=True)
class Stage:
    phase_index: int
    phase: Phase
    unfrozen: int  # backbone blocks trained, from the top
    first_epoch: int  # global epoch where this stage began
    last_epoch: int  # global epoch where the phase ends (exclusive)


def unfrozen_blocks(phase: Phase, epoch_in_phase: int, n_blocks: int) -> int:
    base = n_blocks if phase.unfreeze == "all" else phase.unfreeze
    return min(n_blocks, base + phase.unfreeze_per_epoch * epoch_in_phase)


def stage_at(job: FineTuneJob, epoch: int, n_blocks: int) -> Stage:
    """The stage that global `epoch` belongs to."""
    start = 0
    for index, phase in enumerate(job.spec.strategy.phases):
        if epoch < start + phase.epochs:
            within = epoch - start
            count = unfrozen_blocks(phase, within, n_blocks)
            first = next(e for e in range(within + 1) if unfrozen_blocks(phase, e, n_blocks) == count)
            return Stage(index, phase, count, start + first, start + phase.epochs)
        start += phase.epochs
    raise IndexError(f"epoch {epoch} is past the last phase")


def apply_freezing(model: GraftModel, unfrozen: int) -> None:
    """Train the head and the top `unfrozen` blocks; freeze everything else."""
    model.backbone.requires_grad_(False)
    for block in model.blocks[:unfrozen]:
        for p in block.params:
            p.requires_grad_(True)
    model.head.requires_grad_(True)


def param_groups(model: GraftModel, stage: Stage) -> list[dict]:
    """Head at the phase LR; with layerDecay, block k below the head at lr * factor**k."""
    lr = stage.phase.lr
    trained = model.blocks[: stage.unfrozen]
    if stage.phase.layer_decay is None:
        params = list(model.head.parameters()) + [p for b in trained for p in b.params]
        return [{"params": params, "lr": lr, "name": "all"}]
    factor = stage.phase.layer_decay.factor
    groups = [{"params": list(model.head.parameters()), "lr": lr, "name": "head"}]
    groups += [
        {"params": block.params, "lr": lr * factor ** (k + 1), "name": block.name}
        for k, block in enumerate(trained)
    ]
    return groups


def build_optimizer(groups: list[dict], training: Training) -> torch.optim.Optimizer:
    """The spec's optimizer with fused kernels: torch's default on CPU loops over every tensor
    in Python, and that loop was 19 % (resnet10t) to 29 % (MiniLM) of a full fine-tune's step
    (bench/bench_loop.py)."""
    opt = training.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(groups, momentum=opt.momentum, weight_decay=opt.weight_decay, fused=True)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(groups, weight_decay=opt.weight_decay, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, training: Training, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
    return get_scheduler(
        name[training.scheduler.name], optimizer,
        num_warmup_steps=training.scheduler.warmup_steps, num_training_steps=max(1, total_steps),
    )
