"""Target-domain data: evaluation on it always, and DANN adaptation to it when asked.

DANN (Ganin & Lempitsky 2015): a domain classifier learns to tell source features from
target features, while a gradient-reversal layer makes the backbone learn features that
fool it, so a head trained on labelled source data also works on the unlabelled target.
The reversal weight grows as λ_p = lambdaMax · (2 / (1 + exp(-γ·p)) − 1) with training
progress p ∈ [0, 1], so the noisy early domain signal does not wreck the features.

How it joins the one training loop: a forward hook on the head keeps the source batch's
pooled features; `domain_loss` runs a target batch through the backbone, classifies both
batches' domains behind the reversal layer, and the loop adds that loss to the task loss.
Target labels, when the target data has them, are used only by `evaluate` (target accuracy
every epoch, with or without adaptation, so a source-only run is the baseline). Real target
data usually has none (a plain folder of images, a manifest without the label column): DANN
trains on it all the same, and target accuracy is then reported as unavailable, never guessed.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from graft.spec import DomainAdaptation, FineTuneJob, SpecError
from graft_trainer.data import (Records, RecordDataset, SplitData, Splits, read_records, stream_encoders, to_device,
                                 to_records)
from graft_trainer.evaluate import evaluate
from graft_trainer.models import GraftModel

log = logging.getLogger("graft.dann")

UNLABELLED = -1  # the label index carried by target samples that have no label (never read)
NO_TARGET_LABELS = "not available: the target data has no labels"


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -λ on the way back."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


def reversal_weight(progress: float, config: DomainAdaptation) -> float:
    return config.lambda_max * (2.0 / (1.0 + math.exp(-config.gamma * progress)) - 1.0)


def domain_classifier(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class TargetDomain:
    """`data.target` for one rank: its evaluation shard, and the DANN adversary if configured."""

    def __init__(self, job: FineTuneJob, model: GraftModel, splits: Splits, accelerator):
        self.model, self.accelerator, self.classes = model, accelerator, splits.classes
        inputs, raw = read_records(job.spec.data.target, job, "spec.data.target", labels_optional=True)
        self.labelled = raw is not None
        if self.labelled:
            records = to_records(inputs, raw, splits.classes, "spec.data.target")
        elif job.spec.strategy.domain_adaptation is None:
            raise SpecError([
                f"spec.data.target: '{job.spec.data.target}' has no labels, so there is no target accuracy "
                "to report; add strategy.domainAdaptation to adapt to it, or remove data.target"
            ])
        else:
            records = Records(inputs, [UNLABELLED] * len(inputs))
            log.info("target data: %d unlabelled samples (DANN only; no target accuracy)", len(inputs))
        transform_train, collate = stream_encoders(job, train=True)
        transform_eval, _ = stream_encoders(job, train=False) if transform_train else (None, None)
        rank, world = accelerator.process_index, accelerator.num_processes
        common = dict(collate=collate, classes=splits.classes, batch_size=job.spec.training.batch_size, rank=rank,
                      world_size=world, seed=job.spec.training.seed + 7919, num_workers=job.spec.data.num_workers)
        self.evaluation = SplitData(RecordDataset(records, transform_eval), train=False, **common) if self.labelled else None
        self.config = job.spec.strategy.domain_adaptation
        self.history: list[float] = []
        self.weight = 0.0  # current λ (0 without adaptation)
        self.train_split: SplitData | None = None  # what DANN trains on, with adaptation
        if self.config is None:
            return
        width = next(m for m in model.head.modules() if isinstance(m, nn.Linear)).in_features
        self.adversary = domain_classifier(width, self.config.hidden_size).to(accelerator.device)
        self.optimizer = torch.optim.AdamW(
            self.adversary.parameters(), weight_decay=job.spec.training.optimizer.weight_decay, fused=True)
        self.train_split = SplitData(RecordDataset(records, transform_train), train=True, **common)
        self.position = [0, 0]  # (target epoch, batches of it consumed): checkpointed, so a resume
        self.batches: Iterator | None = None  # continues the target stream where it stood
        per_epoch = -(-splits.train.batches_per_epoch // job.spec.training.grad_accumulation)
        self.total_steps = max(1, per_epoch * job.spec.strategy.total_epochs)
        self.source: torch.Tensor | None = None
        model.head.register_forward_hook(self._keep_source_features)
        log.info("DANN: domain classifier %d→%d→1 behind gradient reversal, λ up to %.2f",
                 width, self.config.hidden_size, self.config.lambda_max)

    def _keep_source_features(self, head: nn.Module, args: tuple, output) -> None:
        self.source = args[0] if head.training else None

    def domain_loss(self, step: int) -> torch.Tensor | float:
        """Domain-classification loss of this source batch + one target batch (0 when the
        backbone is frozen in this stage: there are no features to adapt yet)."""
        if self.config is None or self.source is None or not any(p.requires_grad for p in self.model.backbone.parameters()):
            return 0.0
        self.weight = reversal_weight(min(1.0, step / self.total_steps), self.config)
        if self.batches is None:
            self.batches = self._target_batches()
        inputs, _ = next(self.batches)
        with self.accelerator.autocast():
            target = self.model.features(to_device(inputs, self.accelerator.device))
        features = torch.cat([self.source, target]).float()
        domains = torch.cat([torch.zeros(len(self.source)), torch.ones(len(target))]).to(features.device)
        logits = self.adversary(GradientReversal.apply(features, self.weight)).squeeze(-1)
        self.source = None
        return F.binary_cross_entropy_with_logits(logits, domains)

    def step(self, lr: float) -> None:
        """Average the domain classifier's gradients over ranks (it lives outside DDP), then step."""
        if self.config is None:
            return
        grads = [p.grad for p in self.adversary.parameters() if p.grad is not None]
        if not grads:
            return
        if self.accelerator.num_processes > 1:
            for grad in grads:
                torch.distributed.all_reduce(grad)
                grad /= self.accelerator.num_processes
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _target_batches(self) -> Iterator:
        """Target batches without end, from `position` on (each epoch reshuffled)."""
        epoch, batch = self.position
        while True:
            for inputs_labels in self.train_split.loader(epoch, batch):
                self.position = [epoch, self.position[1] + 1]
                yield inputs_labels
            epoch, batch = epoch + 1, 0
            self.position = [epoch, 0]

    def state_dict(self) -> dict:
        """What a checkpoint keeps so a resume is the exact continuation: the domain classifier,
        its optimizer, where the target stream stands, and the target accuracy history."""
        state: dict = {"history": list(self.history)}
        if self.config is not None:
            state.update(adversary=self.adversary.state_dict(), optimizer=self.optimizer.state_dict(),
                         position=list(self.position))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        if self.config is not None:
            self.adversary.load_state_dict(state["adversary"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.position, self.batches = list(state["position"]), None

    def splits(self) -> list[SplitData]:
        """The target splits this rank reads (their bad samples count against the limit)."""
        return [split for split in (self.evaluation, self.train_split) if split is not None]

    def evaluate(self, loss_fn, progress: Callable[[Iterable], Iterable] = lambda batches: batches) -> dict:
        """Target metrics; `progress` wraps the batches (the watchdog counts each)."""
        if self.evaluation is None:  # unlabelled target: nothing to measure, nothing invented
            return {"reversal_weight": self.weight}
        metrics = evaluate(self.model, progress(self.evaluation.loader(0)), self.accelerator, len(self.classes), loss_fn)
        self.history.append(metrics["val_accuracy"])
        return {"target_accuracy": metrics["val_accuracy"], "target_macro_f1": metrics["val_macro_f1"],
                "reversal_weight": self.weight}

    def summary(self) -> dict:
        adaptation = self.config.method if self.config else "none"
        if self.accelerator.is_main_process and (self.history or not self.labelled):
            accuracy = f"{self.history[-1]:.4f}" if self.labelled else NO_TARGET_LABELS
            print(f"target accuracy {accuracy} (adaptation: {adaptation})", flush=True)
        return {
            "adaptation": adaptation,
            "target_labelled": self.labelled,
            "target_accuracy": self.history[-1] if self.history else None,
            "best_target_accuracy": max(self.history, default=None),
            **({} if self.labelled else {"target_accuracy_note": NO_TARGET_LABELS}),
        }


def attach(job: FineTuneJob, model: GraftModel, splits: Splits, accelerator) -> TargetDomain | None:
    return TargetDomain(job, model, splits, accelerator) if job.spec.data.target else None
