"""Checkpoints that can be trusted after a crash, and a resume that continues bit for bit.

A checkpoint is a directory `step-<global step>/` holding the model (safetensors), the
optimizer and scheduler states, the position in training (epoch, batches consumed, best
metric, ...), workload state (DANN's domain classifier), one file per rank `rng-<r>.pt` with
what differs between ranks (its RNG streams: each rank draws its own dropout and augmentation
randomness; its running loss sums of the epoch) and `manifest.json`: the sha256 of
every other file. It is written as `.step-<n>.tmp/`, every file fsynced, and renamed only when
complete (`graft.fsutil.publish_dir`), so a process killed mid-write leaves the previous
checkpoint as the newest one. Resume (`choose`) takes the newest checkpoint whose files all
match their manifest and warns, naming the bad file, about every newer one it skips.

Why not Accelerate's `save_state` or torch DCP: `save_state` pickles the RNG states (loading
needs `weights_only=False`) and writes in place, without fsync or a commit point; DCP shards
FSDP states, which a DDP job does not have. This format keeps the model readable without
Graft (safetensors), everything else loadable with `torch.load(weights_only=True)`, and one
rename as the commit point.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from graft.fsutil import atomic_write, fsync_file, publish_dir, sha256_file
from graft.spec.contracts import MANIFEST_FILE

log = logging.getLogger("graft.checkpoint")

STEP_DIR = re.compile(r"^step-(\d+)$")
MODEL_FILE, TRAINING_FILE, RANK_FILE = "model.safetensors", "training.pt", "rng-{rank}.pt"


def save(root: Path, step: int, model, optimizer, scheduler, position: dict, accelerator, keep_last: int,
         extra: dict | None = None, rank_state: dict | None = None, writing=nullcontext) -> Path:
    """Write a checkpoint collectively (every rank must call this); returns its directory.
    `extra` holds more state for training.pt, `rank_state` this rank's own state beside its
    RNG streams (tensors, numbers, lists, dicts only). `writing()` wraps the file writes
    (not the waits for the other ranks): the watchdog does not count them as a stall."""
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)  # a node that does not share the dir is refused at start
    mine = tmp / RANK_FILE.format(rank=accelerator.process_index)
    with writing():
        torch.save({"rng": _rng_state(), **(rank_state or {})}, mine)
        fsync_file(mine)
        hashes = [(mine.name, sha256_file(mine))]
    if torch.distributed.is_initialized():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, hashes[0])
        hashes = gathered
    if accelerator.is_main_process:
        with writing():
            _write_main(tmp, final, step, model, optimizer, scheduler, position, accelerator, extra, hashes)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def _write_main(tmp: Path, final: Path, step: int, model, optimizer, scheduler, position: dict, accelerator,
                extra: dict | None, hashes: list) -> None:
    """Rank 0's part: the model, training state and manifest, then the rename that publishes."""
    save_model(accelerator.unwrap_model(model), str(tmp / MODEL_FILE))
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "position": position}
    torch.save({**state, **(extra or {})}, tmp / TRAINING_FILE)
    files = dict(hashes) | {name: sha256_file(tmp / name) for name in (MODEL_FILE, TRAINING_FILE)}
    manifest = {"step": step, "world_size": accelerator.num_processes, "files": files}
    atomic_write(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1))
    publish_dir(tmp, final)


def steps(root: Path) -> list[Path]:
    """Checkpoint directories under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def problem(directory: Path) -> str | None:
    """Why `directory` cannot be resumed from (naming the bad file), or None when every file
    matches its manifest."""
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except FileNotFoundError:
        return f"{manifest_path} is missing"
    except (ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    for name in (MODEL_FILE, TRAINING_FILE):
        if name not in files:
            return f"{manifest_path} does not list {name}"
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != expected:
            return f"{path} does not match its sha256 in {MANIFEST_FILE} (truncated or corrupt)"
    return None


def choose(root: Path) -> Path | None:
    """The newest checkpoint that passes `problem`; each newer, unusable one is skipped with a
    warning that names its bad file (it is left in place for a person to look at)."""
    for directory in steps(root):
        why = problem(directory)
        if why is None:
            return directory
        log.warning("checkpoint %s is unusable, falling back to the previous one: %s", directory.name, why)
    return None


def read(directory: Path) -> dict:
    """The optimizer/scheduler states, the position and any extra state of a checkpoint."""
    return torch.load(directory / TRAINING_FILE, map_location="cpu", weights_only=True)


def load_weights(directory: Path, model) -> None:
    missing, unexpected = load_model(model, str(directory / MODEL_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match this model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def restore_rank(directory: Path, rank: int, fallback_seed: int) -> dict | None:
    """Restore this rank's RNG streams and return the rest of its state; None (and a fresh
    seed) when the checkpoint has no file for this rank, e.g. a resume with more ranks."""
    path = directory / RANK_FILE.format(rank=rank)
    if not path.exists():
        random.seed(fallback_seed)
        np.random.seed(fallback_seed % 2**32)
        torch.manual_seed(fallback_seed)
        return None
    state = torch.load(path, weights_only=True)
    rng = state.pop("rng")
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def _rng_state() -> dict:
    """Every RNG stream as tensors and plain numbers, so it loads with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": list(random.getstate()),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _prune(root: Path, keep_last: int) -> None:
    for old in steps(root)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
