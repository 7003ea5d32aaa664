"""`python -m graft_trainer` with an observer, for test_data_example.py (run under torchrun).

Records the key of every training sample this rank decodes (numWorkers: 0, so decoding
happens when the loop takes a batch: no prefetch blurs the count) into
$TRACE_DIR/rank-<rank>.jsonl. With CRASH_AFTER_CHECKPOINT=1 the process dies right after the
first mid-epoch checkpoint, the way a preempted pod does."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import graft_trainer.checkpoint as checkpoint
import graft_trainer.streaming as streaming
from graft_trainer.__main__ import main

TRACE = Path(os.environ["TRACE_DIR"], f"rank-{os.environ['RANK']}.jsonl")
current = {"train": False, "epoch": 0}

loader, decode, save = streaming.Stream.loader, streaming.Decoder.__call__, checkpoint.save


def traced_loader(self, epoch, start_batch=0):
    current.update(train=self.shuffle, epoch=epoch)  # shuffle is on for the training split only
    return loader(self, epoch, start_batch)


def traced_decode(self, record):
    if current["train"]:
        with TRACE.open("a") as f:
            f.write(json.dumps({"epoch": current["epoch"], "key": record["__key__"]}) + "\n")
    return decode(self, record)


def crashing_save(root, step, model, optimizer, scheduler, position, *args, **kwargs):
    saved = save(root, step, model, optimizer, scheduler, position, *args, **kwargs)
    if os.environ.get("CRASH_AFTER_CHECKPOINT") and position["batch"] > 0:
        os._exit(17)
    return saved


streaming.Stream.loader, streaming.Decoder.__call__, checkpoint.save = traced_loader, traced_decode, crashing_save
sys.exit(main(sys.argv[1:]))
