"""Real faults on real jobs: ranks launched as separate processes with the environment torchrun
gives them (so each one can be signalled on its own), or as torchrun "nodes" on loopback.

The job is a tiny timm resnet10t RANDOMLY INITIALISED on 16 px real digits (what is tested is
recovery: exact resume, clear failures), with dropout and a random flip so a resume must
restore every RNG stream to be bit-identical.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml
from safetensors.torch import load_file

from graft_trainer import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
from trainer_jobs import PYTHON, REPO, digits_doc, trainer_env  # noqa: E402

TORCHRUN = str(Path(PYTHON).with_name("torchrun"))
STEPS_PER_EPOCH = 16  # 64 training samples, 2 ranks, batch 2
EVENT_TIMEOUT_S = 240  # generous: the two cores are shared; no assert depends on it


def fault_doc(tmp_path: Path, **spec) -> dict:
    """Two epochs of 16 steps per rank (2 ranks), a checkpoint every 4 steps."""
    base = dict(
        data={"limit": 64, "augmentations": [{"name": "horizontalFlip"}]},
        head={"dropout": 0.3},
        strategy={"phases": [{"epochs": 1, "lr": 3e-3}, {"epochs": 1, "lr": 1e-3, "unfreeze": 2}]},
        training={"batchSize": 2, "stallTimeoutSeconds": 60},
        checkpoint={"everySteps": 4, "keepLast": 20},
    )
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value}
    return digits_doc(tmp_path, **base)


def write(doc: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ranks(spec: Path, nproc: int = 2, **env) -> list[subprocess.Popen]:
    """`nproc` trainer processes, each with the env torchrun exports to its workers."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        log = open(spec.parent / f"rank-{rank}.log", "a")  # a rerun appends: the whole story stays
        ranks = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": nproc, "LOCAL_WORLD_SIZE": nproc,
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(
            [PYTHON, "-m", "graft_trainer", str(spec)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=trainer_env(**{k: str(v) for k, v in ranks.items()}, **env)))
    return procs


def launch_node(spec: Path, node_rank: int, port: int, cwd: Path) -> subprocess.Popen:
    """One torchrun agent of a 2-node job (1 process per node) on loopback, in its own working
    directory and its own session (so the whole node can be killed at once)."""
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / f"node-{node_rank}.log", "a")
    command = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node_rank),
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "graft_trainer", str(spec)]
    return subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=trainer_env(),
                            start_new_session=True)


def kill_node(agent: subprocess.Popen) -> None:
    """kill -9 a whole node, as when its pod or machine dies: the torchrun agent and every
    process under it (torchrun starts each worker in a session of its own)."""
    import psutil

    victims = [agent.pid, *(child.pid for child in psutil.Process(agent.pid).children(recursive=True))]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.wait(timeout=EVENT_TIMEOUT_S)


def wait_for(condition: Callable[[], bool], procs: list[subprocess.Popen], what: str) -> None:
    """Block until `condition()` holds; fail if every process ended first."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while not condition():
        assert any(p.poll() is None for p in procs), f"the job ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def finish(procs: list[subprocess.Popen]) -> list[int]:
    return [p.wait(timeout=EVENT_TIMEOUT_S) for p in procs]


def kill_all(procs: list[subprocess.Popen], sig: int = signal.SIGKILL) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        p.wait(timeout=EVENT_TIMEOUT_S)


def logs(spec: Path) -> str:
    return "".join(p.read_text() for p in sorted(spec.parent.glob("*.log")))


def final_weights(checkpoints: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.steps(checkpoints)[0] / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ from the uninterrupted run, e.g. {differing[:3]}"


def history(output: Path) -> list[dict]:
    """metrics.jsonl without the timings (those differ between any two runs)."""
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "train_s", "data_wait_s")} for line in lines]
