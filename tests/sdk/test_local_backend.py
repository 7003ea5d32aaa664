"""The local backend with real processes: the env matches what torchrun gives a PyTorchJob
pod's workers, a real 2-process gloo run of the real trainer succeeds with both ranks in the
merged log, and a rank that dies takes the job down with its exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from graft.api import Client
from graft.backends.local import free_port, rank_env
from graft.cli import app

ENV_DUMP = """
import json, os, pathlib
base = set(json.loads(os.environ["BASE_KEYS"]))
env = {k: v for k, v in os.environ.items() if k not in base and k != "_"}
pathlib.Path(__file__).with_name(f"rank-{env['RANK']}.json").write_text(json.dumps(env))
"""


@pytest.mark.distributed
def test_rank_env_is_what_torchrun_gives_a_pytorchjob_pods_workers(tmp_path):
    """Run real torchrun the way the PyTorchJob container does (PET_* set by the operator)."""
    script = tmp_path / "env_dump.py"
    script.write_text(ENV_DUMP)
    port = free_port()
    operator_env = {k: v for k, v in rank_env(0, 2, port).items() if k.startswith("PET_")}
    base = [k for k in os.environ if k not in ("OMP_NUM_THREADS", "PYTHONUNBUFFERED")]
    # PYTHONUNBUFFERED=1 comes from the trainer image's ENV (Dockerfile), not from torchrun.
    env = {**os.environ, **operator_env, "PYTHONUNBUFFERED": "1", "BASE_KEYS": json.dumps([*base, "BASE_KEYS"])}
    env.pop("OMP_NUM_THREADS", None)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    workers = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    for rank, torchrun_env in enumerate(workers):
        agent_only = {"TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE"}
        assert {k: v for k, v in torchrun_env.items() if k not in agent_only} == rank_env(rank, 2, port)


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
    state = json.loads((graft_home / "jobs" / "tiny-digits" / "state.json").read_text())
    rank0, rank1 = state["rank_pids"]
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
    state_file = graft_home / "jobs" / "tiny-digits" / "state.json"
    first_ranks = json.loads(state_file.read_text())["rank_pids"]
    sdk.suspend("tiny-digits")
    assert sdk.get("tiny-digits").phase == "Suspended"
    for pid in first_ranks:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    sdk.resume("tiny-digits")
    assert sdk.get("tiny-digits").phase == "Running"
    assert set(json.loads(state_file.read_text())["rank_pids"]).isdisjoint(first_ranks)
    sdk.delete("tiny-digits")
    assert not (graft_home / "jobs" / "tiny-digits").exists()
