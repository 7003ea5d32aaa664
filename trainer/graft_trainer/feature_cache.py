"""Cached-feature mode: when the backbone never trains and nothing is augmented, its pooled
features are a pure function of (weights, input), so computing them every epoch is waste.

`prepare` computes them once (each rank its own shard, then an all-gather), stores them under
`$GRAFT_CACHE/features/<key>.pt` and hands `fit` splits that yield feature batches; the model
then runs only its head (`GraftModel.precomputed_features`). The same loop, optimizer,
metrics and export run as without the cache, and the exported model still holds the backbone.

The key hashes everything the features depend on: backbone name, weights file content,
options, the exact samples of the split (file contents or texts, and labels), image size /
channels / max length, and the split's name. A later run with the same key reuses the file
and never runs the backbone (`backbone_forwards` counts every call, cache fill included).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from graft.fsutil import atomic_write
from graft.spec import FineTuneJob
from graft_trainer.builtin import cache_root, resolve
from graft_trainer.data import BadDataError, BatchCollate, SplitData, Splits, to_device
from graft_trainer.models import GraftModel

CHUNK = 1 << 20


def applies(job: FineTuneJob) -> bool:
    """'auto' and 'always' (which the spec only accepts when caching is possible) use the cache."""
    data = job.spec.data
    random_access = data.format != "webdataset" and not data.streaming
    # data.target is evaluated through the backbone every epoch (graft_trainer.dann)
    needs_backbone = data.target is not None
    return job.spec.strategy.cache_features != "never" and job.spec.can_cache_features and random_access and not needs_backbone


@dataclass
class FeatureSplit:
    """A split of precomputed features with the same sharding/sampling as the split it replaces
    (`SplitData.indices`), so a cached run sees the same samples in the same order."""

    source: SplitData
    features: torch.Tensor  # (N, feature_dim), in the source dataset's order
    labels: torch.Tensor

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def label_counts(self) -> list[int]:
        return self.source.label_counts

    @property
    def batches_per_epoch(self) -> int:
        return self.source.batches_per_epoch

    @property
    def bad(self) -> dict[str, str]:
        """Corrupt samples met while the features were computed: the source split's."""
        return self.source.bad

    def loader(self, epoch: int, start_batch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        size = self.source.batch_size
        order = torch.tensor(self.source.indices(epoch)[start_batch * size :], dtype=torch.long)
        return [(self.features[i], self.labels[i]) for i in order.split(size)]


@dataclass
class FeatureCache:
    splits: Splits | None = None
    files: dict = field(default_factory=dict)  # per split: key, path, hit, seconds
    backbone_forwards: int = 0  # every backbone call of the run, from a forward pre-hook

    def summary(self) -> dict:
        return {"splits": self.files, "backbone_forwards": self.backbone_forwards}


def prepare(job: FineTuneJob, splits: Splits, model: GraftModel, accelerator) -> FeatureCache | None:
    """Cached splits for this run, or None when the cache does not apply (see `applies`)."""
    if not applies(job):
        return None
    cache = FeatureCache()

    def count(*_):
        cache.backbone_forwards += 1

    model.backbone.register_forward_pre_hook(count)
    cached = {}
    for name in ("train", "validation"):
        split = getattr(splits, name)
        key = cache_key(job, name, split)
        path = cache_root() / "features" / f"{key}.pt"
        started = time.monotonic()
        hit = _everywhere(path.exists(), accelerator)
        features = torch.load(path, map_location="cpu", weights_only=True) if hit else _compute(model, split, accelerator)
        if not hit and accelerator.is_main_process:
            atomic_write(path, lambda tmp: torch.save(features, tmp))
        seconds = time.monotonic() - started
        cache.files[name] = {"key": key, "path": str(path), "hit": hit, "seconds": round(seconds, 3)}
        if accelerator.is_main_process:
            verb = "reused" if hit else "computed"
            print(f"feature cache: {verb} {len(features)} {name} features in {seconds:.2f} s ({path})", flush=True)
        labels = torch.tensor(split.dataset.records.labels)
        cached[name] = FeatureSplit(split, features.to(accelerator.device), labels.to(accelerator.device))
    accelerator.wait_for_everyone()
    model.precomputed_features = True
    cache.splits = Splits(cached["train"], cached["validation"], splits.classes)
    return cache


# ------------------------------------------------------------------------------- the key


def cache_key(job: FineTuneJob, split_name: str, split: SplitData) -> str:
    spec = job.spec
    backbone = spec.backbone
    parts = {
        "backbone": backbone.name,
        "weights": content_hash(Path(resolve(backbone.weights))) if backbone.weights else "random-init",
        "options": backbone.options,
        "task": spec.task,
        "image_size": spec.data.image_size if spec.task == "image-classification" else None,
        "rgb": spec.data.grayscale_to_rgb,
        "max_length": spec.data.max_length if spec.task == "text-classification" else None,
        "split": split_name,
        "samples": _samples_hash(split),
    }
    if backbone.weights is None:  # random weights depend on the seed that initialised them
        parts["seed"] = spec.training.seed
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def content_hash(path: Path) -> str:
    """Hash of a file's bytes, or of every file (name + bytes) under a directory. Remembered
    under the files' (path, size, mtime), so a multi-GB checkpoint is read once, not per run."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    memo = cache_root() / "features" / "content-hashes" / hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:32]
    if memo.exists():
        return memo.read_text()
    digest = hashlib.blake2b(digest_size=16)
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    atomic_write(memo, digest.hexdigest())
    return digest.hexdigest()


def _samples_hash(split: SplitData) -> str:
    """The split's inputs by content (image bytes, texts) and labels, in order."""
    digest = hashlib.blake2b(digest_size=16)
    records = split.dataset.records
    for item, label in zip(records.inputs, records.labels):
        if isinstance(item, (str, Path)) and Path(item).is_file():
            digest.update(Path(item).read_bytes())
        elif hasattr(item, "tobytes"):  # PIL image from an HF dataset
            digest.update(item.tobytes())
        else:
            digest.update(str(item).encode())
        digest.update(f"|{label}|".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ computing and storing


def _everywhere(local: bool, accelerator) -> bool:
    """True only if every rank sees the file (a node without it makes all ranks compute)."""
    flag = torch.tensor(1.0 if local else 0.0, device=accelerator.device)
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


@torch.inference_mode()
def _compute(model: GraftModel, split: SplitData, accelerator) -> torch.Tensor:
    """This rank's strided shard through the backbone, then all ranks' shards gathered.

    Features are stored by sample index, so the pass may visit samples in any order: texts go
    shortest first, so each batch pads to a length close to its own texts' (the backbone's cost
    grows with the padded length, not the real one)."""
    was_training = model.training
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    inputs = split.dataset.records.inputs
    mine = list(range(rank, len(inputs), world))
    if inputs and isinstance(inputs[0], str):
        mine.sort(key=lambda i: len(inputs[i]))
    batches = DataLoader(Subset(split.dataset, mine), batch_size=split.batch_size, num_workers=split.num_workers,
                         collate_fn=BatchCollate(split.collate))
    pieces, bad = [], {}
    for batch, bad_samples in batches:
        bad.update(bad_samples)
        if batch is not None and not bad:
            with accelerator.autocast():
                pieces.append(model.features(to_device(batch[0], accelerator.device)).float().cpu())
    model.train(was_training)
    shard = (mine, torch.cat(pieces) if pieces and not bad else torch.empty(0, 0), bad)
    shards = [shard]
    if world > 1:  # every rank gets here, bad samples or not, so none is left in the gather
        shards = [None] * world
        torch.distributed.all_gather_object(shards, shard)
    unreadable = {source: error for _, _, rank_bad in shards for source, error in rank_bad.items()}
    if unreadable:  # a cached split has a feature for every sample, or it would train on other samples
        raise BadDataError(unreadable, f"feature cache: {len(unreadable)} unreadable samples; fix or remove "
                                       "them, or set strategy.cacheFeatures: never to skip them")
    features = torch.empty(len(inputs), max(block.shape[1] for _, block, _ in shards))
    for indices, block, _ in shards:
        if indices:
            features[torch.tensor(indices, dtype=torch.long)] = block
    return features
