"""The Ray Train path end to end on a real local Ray head: the SDK's Ray backend submits
`python -m graft_trainer.ray_train` through the Job Submission API (what `graft run --backend
ray` does), two Ray Train workers run the one training loop, and a killed worker is restarted
from the last checkpoint Ray registered. Also the parity with the local torchrun path."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from graft.backends.base import JobNotFound
from graft.spec.contracts import read_progress
from ray_jobs import EPOCHS, tiny_job, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.distributed]
JOB_TIMEOUT_S = 300
EVERY_STEPS = 4  # the tiny job runs 8 optimizer steps an epoch: one mid-epoch checkpoint each


def _storage(output: Path, name: str) -> Path:
    return output / "ray" / name  # spec.ray.storagePath defaults to <output.dir>/ray


def _step(checkpoint_dir_name: str) -> int:
    return int(checkpoint_dir_name.removeprefix("step-"))


def _history(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_run(ray_backend, tmp_path_factory):
    """One uninterrupted 2-worker run, shared by the tests that inspect it; it also checkpoints
    mid-epoch (checkpoint.everySteps), which changes nothing in what it trains."""
    output = tmp_path_factory.mktemp("ray-run") / "out"
    job = tiny_job("ray-digits", output, checkpoint={"keepLast": 2, "everySteps": EVERY_STEPS})
    ray_backend.submit(job)
    status = ray_backend.wait(job.metadata.name, timeout=JOB_TIMEOUT_S)
    logs = list(ray_backend.logs(job.metadata.name))
    return job, status, logs, output


def test_two_worker_finetune_completes_with_checkpoints_on_disk(ray_backend, ray_run):
    job, status, logs, output = ray_run
    assert status.phase == "Succeeded", "\n".join(logs[-40:])
    assert status.metrics["epochs_run"] == EPOCHS and status.metrics["val_accuracy"] > 0.2  # 10 classes

    # Ray Train ran two workers, and the loop's rank 0 reported every epoch.
    assert any("world_rank=1" in line for line in logs)
    progress = [read_progress(line) for line in logs if "RayTrainWorker" in line]
    assert [p.epoch for p in progress if p is not None] == [1, 2, 3]

    # Ray kept the best keepLast=2 checkpoints, each a complete loop checkpoint of both ranks.
    kept = sorted((p.name for p in _storage(output, "ray-digits").glob("step-*")), key=_step)
    assert len(kept) == job.spec.checkpoint.keep_last
    for name in kept:
        files = {p.name for p in (_storage(output, "ray-digits") / name).iterdir()}
        assert {"model.safetensors", "training.pt", "rng-0.pt", "rng-1.pt"} <= files
    assert status.metrics["checkpoint"] == str(_storage(output, "ray-digits") / kept[-1])

    # Every checkpoint the loop wrote, mid-epoch ones included, was registered with Ray once and
    # in order (so a restart loses at most everySteps steps); a mid-epoch one is scored by the
    # last validation before it (0.0 before the first), never by a missing score.
    snapshot = json.loads((_storage(output, "ray-digits") / "checkpoint_manager_snapshot.json").read_text())
    steps_per_epoch = status.metrics["steps"] // EPOCHS
    written = list(range(EVERY_STEPS, status.metrics["steps"] + 1, EVERY_STEPS))
    assert steps_per_epoch % EVERY_STEPS == 0 and len(written) > EPOCHS
    assert snapshot["current_report_index"] == len(written)
    registered = list(zip(snapshot["checkpoint_report_indices"], snapshot["checkpoint_results"]))
    assert sorted(_step(r["checkpoint_dir_name"]) for _, r in registered) == [_step(name) for name in kept]
    val_accuracy = [0.0] + [m["val_accuracy"] for m in _history(output)]
    for index, result in registered:
        metrics = result["metrics"]
        assert _step(result["checkpoint_dir_name"]) == metrics["step"] == written[index]
        mid_epoch = metrics["step"] % steps_per_epoch != 0
        assert ("batch" in metrics) == mid_epoch
        assert metrics["val_accuracy"] == val_accuracy[metrics["epoch"] - 1 if mid_epoch else metrics["epoch"]]
    assert any("batch" in r["metrics"] for _, r in registered), "no mid-epoch checkpoint kept: " + str(kept)

    # The loop's own outputs, as for any other launcher.
    assert [m["epoch"] for m in _history(output)] == [1, 2, 3]
    assert (output / "model" / "model.safetensors").is_file() and (output / "report.json").is_file()

    assert [s.name for s in ray_backend.list()] == ["ray-digits"]
    assert any("Succeeded" in line for line in ray_backend.events("ray-digits"))
    ray_backend.delete("ray-digits")
    with pytest.raises(JobNotFound):
        ray_backend.get("ray-digits")


def test_ray_and_local_torchrun_reach_the_same_accuracy(ray_run, tmp_path):
    job, status, _, ray_output = ray_run
    local = tiny_job("local-digits", tmp_path / "out")
    spec = write_spec(local, tmp_path / "local.yaml")
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "graft_trainer", str(spec)],
        capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    local_accuracy = _history(tmp_path / "out")[-1]["val_accuracy"]
    ray_accuracy = _history(ray_output)[-1]["val_accuracy"]
    assert abs(ray_accuracy - local_accuracy) <= 0.01, (ray_accuracy, local_accuracy)


def _registered_checkpoint(storage: Path) -> str | None:
    """The newest checkpoint Ray Train has registered (its checkpoint manager's own record)."""
    try:
        snapshot = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    return latest.get("checkpoint_dir_name")


def _ray_train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of the Ray head this test process started."""
    workers = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.cmdline()[:1] == ["ray::RayTrainWorker"]:
                workers.append(child)
        except psutil.Error:
            continue
    return workers


@pytest.mark.faults
def test_killed_worker_restarts_from_the_last_reported_checkpoint(ray_backend, ray_run, tmp_path):
    output = tmp_path / "out"
    job = tiny_job("ray-digits-fault", output)
    storage = _storage(output, job.metadata.name)
    ray_backend.submit(job)

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (first := _registered_checkpoint(storage)) is None:
        assert time.monotonic() < deadline and not ray_backend.get(job.metadata.name).finished
        time.sleep(0.2)
    victims = _ray_train_workers()
    assert len(victims) == 2
    victims[-1].send_signal(signal.SIGKILL)  # a worker process dies mid-run

    status = ray_backend.wait(job.metadata.name, timeout=JOB_TIMEOUT_S)
    logs = list(ray_backend.logs(job.metadata.name))
    assert status.phase == "Succeeded", "\n".join(logs[-40:])

    # The restarted worker group resumed from the checkpoint Ray handed it (in Ray's storage, not
    # the loop's own checkpoint dir), one Ray had registered before the kill or later.
    resumed = [m.group(1) for line in logs if (m := re.search(r"resuming from (\S+) \(epoch", line))]
    assert len(resumed) == 1, "\n".join(logs[-60:])
    resumed_step = Path(resumed[0])
    assert resumed_step.parent == storage
    assert int(resumed_step.name.removeprefix("step-")) >= int(first.removeprefix("step-"))

    # ... and finished the run as if nothing had happened.
    assert [m["epoch"] for m in _history(output)] == list(range(1, EPOCHS + 1))
    *_, clean_output = ray_run
    assert abs(_history(output)[-1]["val_accuracy"] - _history(clean_output)[-1]["val_accuracy"]) <= 0.01
