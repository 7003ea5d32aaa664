"""Streaming benchmark: WebDataset shards vs an ImageFolder of the same images.

1. Throughput: samples/s of one full training epoch through the trainer's real data paths
   (graft_trainer.data map-style ImageFolder vs graft_trainer.streaming shards packed by
   `graft data pack`, each batch then normalised by `to_device` as the loop does), same decode,
   same transforms, same workers, at each image size and
   worker count. Three readers: the ImageFolder (baseline); the shards as packed, read at the
   offsets of their members files; the same shards without members files (shards made by
   other tools, read by walking their tar headers).
   Throughput is measured in samples per CPU second of the whole epoch (this process and its
   DataLoader workers): on the shared machine other processes stretch wall time by 2-3x at
   random, CPU time far less. Wall-clock samples/s is printed beside it. Each reader's split
   is built once and reads one epoch per round (epoch 0 first, not counted: it starts the
   loader workers, which then live as long as the split, as in a training run). The readers
   run in interleaved rounds (their order rotates every round); each round gives
   shards / ImageFolder, and the figure is the median over rounds with a bootstrap 95 %
   interval (bench_loop's method). Goal: >= 1.2x at 64 px, >= 1.0x at 160 px.
   `--page-cache cold` evicts every file of a reader from the page cache before its epoch
   (`posix_fadvise(DONTNEED)`, no root needed; directory entries stay cached, which favours
   the ImageFolder): the data comes from the disk, as for a dataset larger than memory or a
   first epoch. Reading then waits on the disk, which CPU time does not show, so the wall-clock
   ratio is the one to read in that mode.
2. Time to first batch when the dataset holds 100x the samples one step needs vs 1x, for
   both paths. Streaming plans from index.json and reads one shard, so the ratio should stay
   near 1; the ImageFolder lists (and splits) every file first. Median of --repeats.

Images are generated (random RGB PNGs, N pixels square, imageSize = N). Run with one torch
thread: DataLoader workers use one anyway, and with 0 workers the main process would otherwise
spread each image's float ops over every core, which on a busy machine measures thread
wake-ups (7 ms per op at 160 px here), not reading.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_streaming.py [--sizes 64 160] [--workers 0 2] [--rounds 7]
        [--page-cache warm|cold]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench_loop import median_with_interval
from graft.datapack import pack
from graft.spec import parse_spec
from graft.spec.contracts import DATA_INDEX_FILE, SHARD_MEMBERS_SUFFIX
import graft_trainer.streaming as streaming
from graft_trainer.data import build_splits, to_device

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


def cpu_seconds() -> float:
    """CPU time of this process and of its children: the live DataLoader workers, read from
    their CPU-time clocks (Linux's clock id of process `pid` is (~pid << 3) | 2, what
    clock_getcpuclockid returns), and any that have ended."""
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = sum(time.clock_gettime((~child.pid << 3) | 2) for child in multiprocessing.active_children())
    return time.process_time() + ended.ru_utime + ended.ru_stime + live


def evict_from_page_cache(root: Path) -> None:
    """Drop every file under `root` from the page cache, so the next read goes to the disk."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def epoch_throughput(split, epoch: int, location: str | None = None) -> dict[str, float]:
    """Samples per CPU second and per wall second of one training epoch of `split`; with a
    `location`, its files are evicted from the page cache first."""
    if location:
        evict_from_page_cache(Path(location))
    wall, cpu, samples = time.perf_counter(), cpu_seconds(), 0
    for images, labels in split.loader(epoch):
        to_device(images, "cpu")  # as the loop receives them: scaled and normalised per batch
        samples += len(labels)
    return {"cpu": samples / (cpu_seconds() - cpu), "wall": samples / (time.perf_counter() - wall)}


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


def without_members_files(shards: Path, plain: Path) -> Path:
    """A copy of packed shards as another tool would leave them: tars and index.json only."""
    plain.mkdir()
    for tar in shards.glob("*.tar"):
        shutil.copy(tar, plain / tar.name)
    index = json.loads((shards / DATA_INDEX_FILE).read_text())
    for shard in index["shards"]:
        del shard["members"]
    (plain / DATA_INDEX_FILE).write_text(json.dumps(index))
    assert not list(plain.glob(f"*{SHARD_MEMBERS_SUFFIX}"))
    return plain


def throughput_ratios(tmp: Path, samples: int, size: int, workers: int, rounds: int, cold: bool) -> None:
    """Interleaved rounds of the three readers; prints each one's ratio to the ImageFolder."""
    folder = tmp / f"folder-{size}"
    if not folder.exists():
        write_imagefolder(folder, samples, size)
        pack(folder, tmp / f"shards-{size}", shard_size="16MB", progress=False)
        without_members_files(tmp / f"shards-{size}", tmp / f"plain-{size}")
    readers = {"imagefolder": ("imagefolder", folder), "shards": ("webdataset", tmp / f"shards-{size}"),
               "plain tar": ("webdataset", tmp / f"plain-{size}")}
    splits = {name: build_splits(job(fmt, str(location), workers, size), rank=0, world_size=1).train
              for name, (fmt, location) in readers.items()}
    for split in splits.values():
        epoch_throughput(split, 0)
    rates: dict[str, list[dict[str, float]]] = {name: [] for name in readers}
    names = list(readers)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            location = str(readers[name][1]) if cold else None
            rates[name].append(epoch_throughput(splits[name], round_index + 1, location))
    print(f"throughput, {samples} images {size}x{size}, {workers} workers, batch {BATCH}, {rounds} rounds, "
          f"{'cold' if cold else 'warm'} page cache:")
    for name in names:
        line = "  ".join(f"{statistics.median(r[measure] for r in rates[name]):6.0f} per {measure} s"
                         for measure in ("cpu", "wall"))
        if name != "imagefolder":
            for measure in ("cpu", "wall"):
                ratios = [mine[measure] / base[measure] for mine, base in zip(rates[name], rates["imagefolder"])]
                median, low, high = median_with_interval(ratios)
                line += f"  {measure} {median:.3f}x [{low:.3f}, {high:.3f}]"
        print(f"  {name:12s} {line}", flush=True)
    print(f"  (ratios: {', '.join(n for n in names[1:])} / imagefolder, median over rounds [bootstrap 95 %])")


def first_batch(tmp: Path, size: int, workers: int, repeats: int) -> None:
    """Time to first batch with 1x and 100x the data one 10-step epoch needs, both readers."""
    small, large = BATCH * 10, BATCH * 10 * 100  # 1x and 100x a 10-step epoch
    timings = {}
    for name, n in (("1x", small), ("100x", large)):
        f = write_imagefolder(tmp / f"folder-{name}", n, size)
        pack(f, tmp / f"shards-{name}", shard_size="4MB", progress=False)
        timings[name] = (first_batch_seconds("imagefolder", str(f), workers, size, repeats),
                         first_batch_seconds("webdataset", str(tmp / f"shards-{name}"), workers, size, repeats))
    print(f"time to first batch ({size} px, {workers} workers; 1x = {small} images, 100x = {large}):")
    for i, label in enumerate(("imagefolder", "shards     ")):
        one, hundred = timings["1x"][i], timings["100x"][i]
        print(f"  {label} 1x {one:6.3f}s  100x {hundred:6.3f}s  ratio 100x/1x = {hundred / one:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="images for the throughput runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 160], help="image sides in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="time-to-first-batch measurements (0: skip them)")
    parser.add_argument("--page-cache", choices=("warm", "cold"), default="warm",
                        help="cold: every reader's files are evicted from the page cache before its epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            for workers in args.workers:
                throughput_ratios(tmp, args.samples, size, workers, args.rounds, args.page_cache == "cold")
        if args.repeats:
            first_batch(tmp, args.sizes[0], args.workers[-1], args.repeats)


if __name__ == "__main__":
    main()
