"""Validation metrics that are exact under DDP.

Each rank evaluates its own disjoint, unpadded shard (see `data.SplitData.indices`) and keeps
only sums: the loss total, the sample count and a confusion matrix. Summing those across
ranks gives the same numbers a single process would compute, with no duplicated padding
samples, and every metric (accuracy, macro-F1, per-class precision/recall) follows from the
summed confusion matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from graft_trainer.data import to_device


@torch.no_grad()
def evaluate(model: nn.Module, batches, accelerator, num_classes: int, loss_fn) -> dict:
    was_training = model.training
    model.eval()
    device = accelerator.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for inputs, labels in batches:
        inputs, labels = to_device(inputs, device), labels.to(device)
        with accelerator.autocast():
            logits = model(inputs)
        loss_sum += loss_fn(logits.float(), labels).double() * len(labels)
        confusion += confusion_matrix(logits.argmax(-1), labels, num_classes)
    model.train(was_training)
    loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    confusion = accelerator.reduce(confusion, reduction="sum")
    count = int(confusion.sum())
    return {"val_loss": float(loss_sum) / max(count, 1), **metrics_from_confusion(confusion.cpu())}


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: torch.Tensor) -> dict:
    confusion = confusion.double()
    correct = confusion.diag()
    predicted = confusion.sum(0)
    actual = confusion.sum(1)
    precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), torch.zeros_like(correct))
    recall = torch.where(actual > 0, correct / actual.clamp(min=1), torch.zeros_like(correct))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(correct))
    present = actual > 0
    return {
        "val_accuracy": float(correct.sum() / confusion.sum().clamp(min=1)),
        "val_macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "val_count": int(confusion.sum()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "confusion": confusion.long().tolist(),
    }

