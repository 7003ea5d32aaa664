"""The feature cache under real 2-process DDP (gloo): each rank computes its shard, the shards
are gathered in dataset order, and the file equals what one process computes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from workload_jobs import digits_job
from graft_trainer.data import build_splits, to_device
from graft_trainer.feature_cache import cache_key
from graft_trainer.models import build_model

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_two_ranks_fill_the_cache_with_the_single_process_features(source_weights, tmp_path):
    job = digits_job(tmp_path / "out", source_weights, data={"limit": 120},
                     strategy={"cacheFeatures": "always", "phases": [{"name": "head-only", "epochs": 2, "lr": 1.0e-2}]})
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(job.to_document()))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", GRAFT_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "graft_trainer", str(spec)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("feature cache: computed") == 2  # rank 0 reports train and validation once

    splits = build_splits(job, 0, 1)
    model = build_model(job, len(splits.classes)).eval()
    for name in ("train", "validation"):
        split = getattr(splits, name)
        stored = torch.load(tmp_path / "cache" / "features" / f"{cache_key(job, name, split)}.pt", weights_only=True)
        samples = [split.dataset[i] for i in range(len(split.dataset))]  # dataset order
        images = to_device(split.collate(*map(list, zip(*samples)))[0], "cpu")
        with torch.no_grad():
            expected = model.features(images)
        assert torch.allclose(stored, expected, atol=1e-5), name
