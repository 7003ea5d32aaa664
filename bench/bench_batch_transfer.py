"""How a collated batch should leave a DataLoader worker: inside the pickled message (a numpy
array, `graft_trainer.data.leaving_worker` up to INLINE_BATCH_BYTES) or as a shared-memory
file (a tensor, PyTorch's default for every tensor a worker returns).

Two long-lived workers hand the training process ready-made uint8 batches of 32 images (no
reading, no decoding: only the hand-over is measured) through a real DataLoader. The figure is
CPU time per batch of this process and its workers together (their CPU-time clocks, as
bench_streaming reads them), median over interleaved rounds, and array / tensor with a bootstrap
95 % interval: below 1 the message is cheaper. The crossing point sets INLINE_BATCH_BYTES.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_batch_transfer.py [--sizes 64 96 128 160] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bench_loop import median_with_interval
from bench_streaming import cpu_seconds
from graft_trainer.data import to_device

BATCH, BATCHES = 32, 60


class ReadyBatches(IterableDataset):
    """BATCHES batches of `size` px images per epoch, split between the workers."""

    def __init__(self, size: int, as_array: bool):
        self.size, self.as_array = size, as_array

    def __iter__(self):
        info = get_worker_info()
        images = np.zeros((BATCH, 3, self.size, self.size), dtype=np.uint8)
        for _ in range(BATCHES // info.num_workers):
            batch = images.copy()  # a collate makes a new batch every time
            yield (batch if self.as_array else torch.from_numpy(batch)), list(range(BATCH)), []


def as_collated(batch):
    return batch


def per_batch_cpu(loader: DataLoader) -> float:
    """CPU seconds per batch of one epoch, from the worker's hand-over to the batch on the device."""
    start = cpu_seconds()
    for images, labels, _ in loader:
        to_device(images, "cpu")
    return (cpu_seconds() - start) / BATCHES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160], help="image sides in pixels")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"CPU per batch of {BATCH} uint8 RGB images from 2 workers, median of {args.rounds} rounds:")
    for size in args.sizes:
        loaders = {kind: DataLoader(ReadyBatches(size, kind == "array"), batch_size=None, num_workers=2,
                                    collate_fn=as_collated, persistent_workers=True, prefetch_factor=4)
                   for kind in ("array", "tensor")}
        for loader in loaders.values():
            per_batch_cpu(loader)  # starts the workers
        rounds: dict[str, list[float]] = {kind: [] for kind in loaders}
        for index in range(args.rounds):
            for kind in (("array", "tensor") if index % 2 == 0 else ("tensor", "array")):
                rounds[kind].append(per_batch_cpu(loaders[kind]))
        median, low, high = median_with_interval([a / t for a, t in zip(rounds["array"], rounds["tensor"])])
        kib = BATCH * 3 * size * size / 1024
        print(f"  {size:4d} px ({kib:6.0f} KiB): array {1e3 * statistics.median(rounds['array']):.2f} ms, "
              f"tensor {1e3 * statistics.median(rounds['tensor']):.2f} ms, "
              f"array / tensor {median:.3f}x [{low:.3f}, {high:.3f}]", flush=True)
        del loaders


if __name__ == "__main__":
    main()
