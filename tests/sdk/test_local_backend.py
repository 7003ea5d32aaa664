"""The local backend with real processes: torchrun's launcher starts the real trainer as 2 gloo
ranks, the run shows one line per epoch with both ranks in the merged log, a rank that dies
takes the job down with its exit code, and suspend/resume stop and start new ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft.api import Client
from graft.cli import app

def rank_pids(graft_home, count: int = 2, timeout: float = 60) -> list[int]:
    """The trainer processes torchrun's launcher started, by rank: the supervisor's children,
    read from /proc (Linux), once all `count` of them exist."""
    state = json.loads((graft_home / "jobs" / "tiny-digits" / "state.json").read_text())
    tasks = Path(f"/proc/{state['supervisor_pid']}/task")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ranks = {}
        for pid in (int(p) for task in tasks.iterdir() for p in (task / "children").read_text().split()):
            env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            if "RANK" in env:
                ranks[int(env["RANK"])] = pid
        if len(ranks) == count:
            return [ranks[rank] for rank in range(count)]
        time.sleep(0.1)
    raise AssertionError(f"torchrun did not start {count} ranks within {timeout}s")


@pytest.mark.slow
@pytest.mark.distributed
def test_graft_run_trains_with_two_real_processes(tiny_spec, graft_home, tmp_path):
    """The real trainer, 2 gloo ranks, a tiny randomly initialised timm test model."""
    output = tmp_path / "run-out"
    proc = subprocess.run(
        [sys.executable, "-m", "graft.cli", "run", str(tiny_spec), "--nproc", "2", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one line per epoch for people; the machine line stays in the job's log for programs
    assert "graft-progress" not in proc.stdout and "it/s" not in proc.stdout  # no raw lines, no bars
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("[rank 0] epoch 1/1 head: ")]
    assert len(epoch_lines) == 1 and "accuracy" in epoch_lines[0] and "samples/s" in epoch_lines[0]
    assert "[rank 0] graft-progress {" in (graft_home / "jobs" / "tiny-digits" / "logs.txt").read_text()
    assert (output / "model").is_dir() and (output / "metrics.jsonl").is_file()

    sdk = Client("local")  # another "invocation" reads the state the run left behind
    status = sdk.get("tiny-digits")
    assert status.phase == "Succeeded"
    assert status.metrics["epoch"] == 1 and 0.0 <= status.metrics["val_accuracy"] <= 1.0
    events = sdk.events("tiny-digits")
    assert any("rank 0 exited with code 0" in e for e in events)
    assert any("rank 1 exited with code 0" in e for e in events)  # rank 1 logs nothing on success
    result = CliRunner().invoke(app, ["logs", "tiny-digits", "--backend", "local"])
    assert result.exit_code == 0 and epoch_lines[0] in result.output and "graft-progress" not in result.output


@pytest.mark.distributed
def test_a_failing_run_merges_both_ranks_errors_and_exits_4(tiny_spec, graft_home, tmp_path):
    """The real trainer on a data path that does not exist: every rank reports it and exits 2."""
    spec = tiny_spec.read_text().replace("builtin://sklearn-digits?classes=0-3", str(tmp_path / "missing"))
    tiny_spec.write_text(spec)
    proc = subprocess.run([sys.executable, "-m", "graft.cli", "run", str(tiny_spec), "--nproc", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"[rank {rank}]   - spec.data.train: '{tmp_path / 'missing'}' does not exist" in proc.stdout
    assert "Failed — rank" in proc.stderr and "exited with code 2" in proc.stderr


@pytest.mark.faults
@pytest.mark.distributed
def test_a_killed_rank_stops_the_others_and_fails_the_job_with_its_exit_code(tiny_spec, graft_home):
    sdk = Client("local", nproc=2)
    sdk.submit(tiny_spec)
    running = sdk.wait("tiny-digits", until=("Running", "Failed", "Succeeded"), timeout=60)
    assert running.phase == "Running"
    rank0, rank1 = rank_pids(graft_home)
    os.kill(rank1, signal.SIGKILL)

    result = CliRunner().invoke(app, ["wait", "tiny-digits", "--backend", "local", "--timeout", "60"])
    assert result.exit_code == 4, result.output
    assert "rank 1 was killed by signal SIGKILL (exit code 137)" in result.output
    with pytest.raises(ProcessLookupError):  # rank 0 was stopped, not left training alone
        for _ in range(50):
            os.kill(rank0, 0)
            time.sleep(0.1)
    assert any("stopping the other ranks" in e for e in sdk.events("tiny-digits"))
    sdk.delete("tiny-digits")
    assert sdk.list() == []


@pytest.mark.faults
@pytest.mark.distributed
def test_suspend_stops_the_ranks_and_keeps_the_job_and_resume_starts_new_ones(tiny_spec, graft_home):
    sdk = Client("local", nproc=2)
    sdk.submit(tiny_spec)
    sdk.wait("tiny-digits", until=("Running",), timeout=60)
    first_ranks = rank_pids(graft_home)
    sdk.suspend("tiny-digits")
    assert sdk.get("tiny-digits").phase == "Suspended"
    for pid in first_ranks:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    sdk.resume("tiny-digits")
    assert sdk.get("tiny-digits").phase == "Running"
    assert set(rank_pids(graft_home)).isdisjoint(first_ranks)
    sdk.delete("tiny-digits")
    assert not (graft_home / "jobs" / "tiny-digits").exists()
