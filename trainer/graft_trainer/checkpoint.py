"""Checkpoints that can be trusted after a crash, and a resume that continues bit for bit.

A checkpoint is a directory `step-<global step>/` holding the model (safetensors), the
optimizer and scheduler states, the position in training (epoch, batches consumed, best
metric, ...) and one RNG state file per rank (each rank draws different dropout and
augmentation randomness). It is written as `.step-<n>.tmp/` and renamed only when complete,
so a process killed mid-write leaves the previous checkpoint as the newest valid one.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

STEP_DIR = re.compile(r"^step-(\d+)$")


def save(root: Path, step: int, model, optimizer, scheduler, position: dict, accelerator, keep_last: int) -> Path:
    """Write a checkpoint collectively (every rank must call this); returns its directory."""
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)  # other nodes may not share the filesystem
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "position": position},
            tmp / "training.pt",
        )
        shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step after a resume
        tmp.rename(final)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, if any."""
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return max(steps)[1] if steps else None


def read(directory: Path) -> dict:
    """The optimizer/scheduler states and the position stored in a checkpoint."""
    return torch.load(directory / "training.pt", map_location="cpu", weights_only=False)


def load_weights(directory: Path, model) -> None:
    missing, unexpected = load_model(model, str(directory / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match this model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def restore_rng(directory: Path, rank: int, fallback_seed: int) -> bool:
    """Restore this rank's RNG streams; False (and a fresh seed) when the file is missing,
    e.g. a resume with more ranks than the checkpoint had."""
    path = directory / f"rng-{rank}.pt"
    if not path.exists():
        random.seed(fallback_seed)
        np.random.seed(fallback_seed % 2**32)
        torch.manual_seed(fallback_seed)
        return False
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return True


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
    for _, old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
