"""One rank of the distributed data test; test_data_distributed.py starts two as processes.

For every shard location given (`FORMAT=LOCATION`, or a WebDataset location): reads epoch 0 and epoch 1 with 2 dataloader workers, then
epoch 1 again interrupted after RESUME_AT batches and resumed from that position. After each
batch it all-reduces a step count over gloo, as a DDP step would: if ranks disagreed on the
number of batches, a rank would wait forever (the timeout turns that into a failure).
Writes the sample ids it saw to <out>/rank-<rank>.json."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: shardgen
from shardgen import text_stream  # noqa: E402

RESUME_AT = 3


def steps(loader) -> list[list[int]]:
    seen = []
    for ids, _ in loader:
        dist.all_reduce(torch.ones(1))
        seen.append(ids)
    return seen


def main(out: str, locations: list[str]) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {}
    for location in locations:
        fmt, _, path = location.rpartition("=")
        stream = text_stream(path, fmt=fmt or "webdataset", rank=rank, world_size=world,
                             workers=2, batch_size=8)
        epoch0, epoch1 = steps(stream.loader(0)), steps(stream.loader(1))
        interrupted = []
        for ids, _ in stream.loader(1):  # the "crash": abandon the epoch after RESUME_AT batches
            dist.all_reduce(torch.ones(1))
            interrupted.append(ids)
            if len(interrupted) == RESUME_AT:
                break
        resumed = steps(stream.loader(1, RESUME_AT))
        report[location] = {"epoch0": epoch0, "epoch1": epoch1, "interrupted": interrupted,
                            "resumed": resumed, "batches_per_epoch": stream.batches_per_epoch}
    Path(out, f"rank-{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
