"""Streaming benchmark: WebDataset shards vs an ImageFolder of the same images.

1. Throughput: samples/s of one full training epoch through the trainer's real data paths
   (graft_trainer.data map-style ImageFolder vs graft_trainer.streaming shards packed by
   `graft data pack`), same transforms, same workers. Reported as shards / ImageFolder.
2. Time to first batch when the dataset holds 100x the samples one step needs vs 1x, for
   both paths. Streaming plans from index.json and reads one shard, so the ratio should stay
   near 1; the ImageFolder lists (and splits) every file first.

Images are generated (random RGB PNGs, --size pixels square, imageSize = --size). On a busy
machine the figures move a lot: throughput is the best of --repeats alternating runs, time to
first batch the median.  Run: .venv/bin/python bench/bench_streaming.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from graft.datapack import pack
from graft.spec import parse_spec
import graft_trainer.streaming as streaming
from graft_trainer.data import build_splits

BATCH = 32


def write_imagefolder(root: Path, n: int, size: int, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:07d}.png")
    return root


def job(fmt: str, location: str, workers: int, size: int):
    return parse_spec({
        "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench"},
        "spec": {
            "task": "image-classification", "backbone": {"name": "timm/resnet18"},
            "data": {"format": fmt, "train": location, "imageSize": size, "numWorkers": workers,
                     "validationFraction": 0.1, "streaming": fmt == "webdataset"},
            "strategy": {"phases": [{"epochs": 1, "lr": 0.001}]},
            "training": {"batchSize": BATCH},
        },
    })


def epoch_throughput(fmt: str, location: str, workers: int, size: int) -> float:
    splits = build_splits(job(fmt, location, workers, size), rank=0, world_size=1)
    start, samples = time.perf_counter(), 0
    for _, labels in splits.train.loader(0):
        samples += len(labels)
    return samples / (time.perf_counter() - start)


def first_batch_seconds(fmt: str, location: str, workers: int, size: int, repeats: int) -> float:
    """Median over `repeats` of: plan the data from scratch, then take one batch."""
    timings = []
    for _ in range(repeats):
        streaming.discover.cache_clear()  # no help from an earlier run's discovery
        start = time.perf_counter()
        splits = build_splits(job(fmt, location, workers, size), rank=0, world_size=1)
        next(iter(splits.train.loader(0)))
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="images for the throughput run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size, workers = args.size, args.workers
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_imagefolder(tmp / "folder", args.samples, size)
        pack(folder, tmp / "shards", shard_size="16MB", progress=False)
        rates: dict[str, list[float]] = {"imagefolder": [], "webdataset": []}
        for _ in range(args.repeats):  # alternate, so background load hits both alike
            rates["imagefolder"].append(epoch_throughput("imagefolder", str(folder), workers, size))
            rates["webdataset"].append(epoch_throughput("webdataset", str(tmp / "shards"), workers, size))
        folder_rate, shard_rate = max(rates["imagefolder"]), max(rates["webdataset"])
        print(f"throughput ({args.samples} images {size}x{size}, {workers} workers, batch {BATCH}):")
        print(f"  imagefolder {folder_rate:8.0f} samples/s")
        print(f"  shards      {shard_rate:8.0f} samples/s   ratio shards/imagefolder = {shard_rate / folder_rate:.2f}")

        small, large = BATCH * 10, BATCH * 10 * 100  # 1x and 100x a 10-step epoch
        timings = {}
        for name, n in (("1x", small), ("100x", large)):
            f = write_imagefolder(tmp / f"folder-{name}", n, size)
            pack(f, tmp / f"shards-{name}", shard_size="4MB", progress=False)
            timings[name] = (first_batch_seconds("imagefolder", str(f), workers, size, args.repeats),
                             first_batch_seconds("webdataset", str(tmp / f"shards-{name}"), workers, size, args.repeats))
        print(f"time to first batch (1x = {small} images, 100x = {large}):")
        for i, label in enumerate(("imagefolder", "shards     ")):
            one, hundred = timings["1x"][i], timings["100x"][i]
            print(f"  {label} 1x {one:6.3f}s  100x {hundred:6.3f}s  ratio 100x/1x = {hundred / one:.2f}")


if __name__ == "__main__":
    main()
