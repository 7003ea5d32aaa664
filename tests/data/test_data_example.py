"""examples/webdataset-shards.yaml end to end: the real digits packed by `graft data pack`,
2 processes under torchrun training from the streamed shards, a crash right after a mid-epoch
checkpoint, and a restart that finishes the epoch: every training sample exactly once.

Smaller than the example so it fits the test budget: timm's tiny `test_resnet` (random init),
16x16 images, one epoch, numWorkers 0 (see traced_trainer.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from graft.datapack import pack
from graft_trainer.builtin import resolve

TRACED = Path(__file__).with_name("traced_trainer.py")


def torchrun(spec: Path, trace: Path, crash: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRACE_DIR": str(trace), "OMP_NUM_THREADS": "1"}
    if crash:
        env["CRASH_AFTER_CHECKPOINT"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(TRACED), str(spec)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def keys(trace: Path) -> list[str]:
    return [json.loads(line)["key"] for f in sorted(trace.glob("rank-*.jsonl")) for line in f.read_text().splitlines()]


@pytest.mark.distributed
@pytest.mark.slow
def test_example_trains_from_shards_and_resumes_mid_epoch_without_repeats(tmp_path, repo):
    index = pack(resolve("builtin://sklearn-digits"), tmp_path / "shards", "100KB", progress=False)
    document = yaml.safe_load((repo / "examples" / "webdataset-shards.yaml").read_text())
    spec = document["spec"]
    spec["backbone"] = {"name": "timm/test_resnet"}
    spec["data"].update(train=str(tmp_path / "shards"), imageSize=16, numWorkers=0)
    spec["strategy"]["phases"][0]["epochs"] = 1
    spec["checkpoint"]["everySteps"] = 5
    spec["output"]["dir"] = str(tmp_path / "out")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
    first, second = tmp_path / "trace-1", tmp_path / "trace-2"
    first.mkdir(), second.mkdir()

    crashed = torchrun(tmp_path / "spec.yaml", first, crash=True)
    assert crashed.returncode != 0 and (tmp_path / "out" / "checkpoints" / "step-5").is_dir(), crashed.stderr[-3000:]
    resumed = torchrun(tmp_path / "spec.yaml", second, crash=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(epoch 1, batch 5)" in resumed.stdout

    n_train = round(index["total"] * 0.8)
    before, after = keys(first), keys(second)
    assert 2 * 5 * 31 <= len(before) <= 2 * 5 * 32  # 5 batches (31-32 samples) per rank, then the crash
    assert not set(before) & set(after), "the resumed run repeated samples"
    assert Counter(before + after) == Counter({k: 1 for k in set(before + after)})
    assert len(before + after) == n_train  # nothing skipped: the whole training split, once
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["epoch"] == 1 and metrics[-1]["val_accuracy"] > 0.1  # better than chance
