"""Real multi-process training: 2-rank gloo DDP through torchrun, and kill → resume.

The backbone is a tiny timm resnet10t RANDOMLY INITIALISED (what is tested is the mechanics:
replica equality, loss going down, exact resume), on the real sklearn digits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.operator.status import from_progress, parse_progress_line
from graft_trainer.checkpoint import steps
from graft_trainer.data import build_splits
from trainer_jobs import PYTHON, REPO, digits_doc, job_of, trainer_env, write_spec

TORCHRUN = str(Path(PYTHON).with_name("torchrun"))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_ddp_keeps_replicas_identical_and_loss_falls(tmp_path):
    doc = digits_doc(
        tmp_path,
        data={"limit": 128, "augmentations": [{"name": "rotation", "degrees": 10}]},
        strategy={"phases": [{"epochs": 1, "lr": 3e-3}, {"epochs": 2, "lr": 3e-3, "unfreeze": "all"}]},
        training={"gradAccumulation": 2},  # exercises DDP's no_sync path between optimizer steps
    )
    spec = write_spec(doc, tmp_path / "job.yaml")
    result = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "graft_trainer", str(spec)],
        cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    fingerprints = report["replica_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1], fingerprints
    # each rank's peak memory, what a user sizes the pod's memory request from (torch alone is ~300 MiB)
    assert len(report["peak_rss_mib"]) == 2 and all(200 < rss < 16_000 for rss in report["peak_rss_mib"])
    assert f"peak memory {max(report['peak_rss_mib']):.0f} MiB per process" in result.stdout
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    progress = [line for line in result.stdout.splitlines() if line.startswith("graft-progress ")]
    assert len(progress) == 3  # rank 0 only, one per epoch
    # the operator mirrors these lines into FineTuneJob.status: its parser must read them
    mirrored = from_progress(parse_progress_line(progress[-1]), "val_accuracy")
    assert mirrored["progress"]["summary"] == "3/3 epochs"
    assert mirrored["bestMetric"]["value"] == max(m["val_accuracy"] for m in history)
    assert Path(mirrored["lastCheckpoint"]).is_dir()
    # every validation sample counted once across the two ranks (no padding duplicates)
    validation = build_splits(job_of(doc), rank=0, world_size=1).validation
    assert sum(map(sum, report["confusion"])) == len(validation.dataset)


@pytest.mark.slow
@pytest.mark.distributed
def test_one_rank_under_torchrun_trains_as_without_a_launcher(tmp_path):
    """torchrun with 1 process starts a process group, yet the loop trains the bare model (DDP
    over one rank only copies gradients); the results must not depend on the launcher."""
    for name, launcher in (("launched", [TORCHRUN, "--standalone", "--nproc_per_node", "1"]), ("direct", [PYTHON])):
        spec = write_spec(digits_doc(tmp_path / name), tmp_path / f"{name}.yaml")
        result = subprocess.run([*launcher, "-m", "graft_trainer", str(spec)],
                                cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    weights = [load_file(steps(tmp_path / name / "out" / "checkpoints")[0] / "model.safetensors")
               for name in ("launched", "direct")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "weights depend on the launcher"
    strip = lambda name: [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "train_s", "data_wait_s")}
                          for x in (tmp_path / name / "out" / "metrics.jsonl").read_text().splitlines()]
    assert strip("launched") == strip("direct")


@pytest.mark.slow
@pytest.mark.faults
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    """Tolerance: bitwise. Same process count and threads, so every op replays exactly."""
    overrides = dict(
        data={"limit": 192, "augmentations": [{"name": "horizontalFlip"}]},  # RNG must be restored
        head={"dropout": 0.3},
        strategy={"phases": [{"epochs": 1, "lr": 3e-3}, {"epochs": 2, "lr": 1e-3, "unfreeze": 2}]},
        checkpoint={"everySteps": 3, "keepLast": 20},
    )
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir(), interrupted.mkdir()
    command = lambda d: [PYTHON, "-m", "graft_trainer", str(write_spec(digits_doc(d, **overrides), d / "job.yaml"))]

    subprocess.run(command(straight), cwd=REPO, env=trainer_env(), check=True, capture_output=True, timeout=300)

    victim = subprocess.Popen(command(interrupted), cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = interrupted / "out" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (checkpoints / "step-15").exists():  # mid-epoch 2 of 3 (12 steps per epoch)
        assert victim.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (interrupted / "out" / "report.json").exists(), "the run finished before the kill"

    resumed = subprocess.run(command(interrupted), cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout

    final_a = load_file(steps(straight / "out" / "checkpoints")[0] / "model.safetensors")
    final_b = load_file(steps(checkpoints)[0] / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a), "resumed weights differ"
    metrics = lambda d: (d / "out" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "train_s", "data_wait_s")} for x in lines]
    assert strip(metrics(straight)) == strip(metrics(interrupted))
