"""DANN resumes exactly: killed (-9) mid-epoch while adapting, the rerun continues with the
domain classifier, its optimizer and the target stream where they stood, to the same weights
and metrics as an uninterrupted run. One process; tiny resnet10t RANDOMLY INITIALISED on 16 px
real digits, target = the same scans under a noisy sensor shift."""

from __future__ import annotations

import subprocess

import pytest
import torch

from fault_jobs import (assert_same_weights, final_weights, finish, history, kill_all, wait_for, write)
from graft_trainer import checkpoint
from trainer_jobs import PYTHON, REPO, digits_doc, trainer_env

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _dann(tmp_path):
    return digits_doc(
        tmp_path,
        data={"limit": 64, "target": "builtin://sklearn-digits?classes=0-4&shift=noisy",
              "augmentations": [{"name": "horizontalFlip"}]},
        strategy={"phases": [{"epochs": 1, "lr": 3e-3}, {"epochs": 1, "lr": 1e-3, "unfreeze": "all"}],
                  "domainAdaptation": {"hiddenSize": 16, "lambdaMax": 0.5}},
        training={"batchSize": 4}, checkpoint={"everySteps": 4, "keepLast": 20},
    )


def _run(spec):
    log = open(spec.parent / "rank-0.log", "a")
    return subprocess.Popen([PYTHON, "-m", "graft_trainer", str(spec)], cwd=REPO, env=trainer_env(),
                            stdout=log, stderr=subprocess.STDOUT)


def test_dann_killed_mid_epoch_resumes_bit_identical(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    specs = [write(_dann(d), d / "job.yaml") for d in (straight, interrupted)]
    assert finish([_run(specs[0])]) == [0], (straight / "rank-0.log").read_text()[-3000:]

    checkpoints = interrupted / "out" / "checkpoints"
    victim = _run(specs[1])
    wait_for(lambda: (checkpoints / "step-20").is_dir(), [victim], "a checkpoint inside the DANN phase")
    kill_all([victim])
    assert not (interrupted / "out" / "report.json").exists(), "the run finished before the kill"
    assert finish([_run(specs[1])]) == [0], (interrupted / "rank-0.log").read_text()[-3000:]
    assert "resuming from" in (interrupted / "rank-0.log").read_text()

    assert_same_weights(final_weights(straight / "out" / "checkpoints"), final_weights(checkpoints))
    adversaries = [checkpoint.read(checkpoint.steps(d / "out" / "checkpoints")[0])["target"] for d in (straight, interrupted)]
    assert adversaries[0]["position"] == adversaries[1]["position"]
    assert all(torch.equal(adversaries[0]["adversary"][k], adversaries[1]["adversary"][k]) for k in adversaries[0]["adversary"])
    assert history(straight / "out") == history(interrupted / "out")  # target accuracy and λ included
