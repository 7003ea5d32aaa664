"""Preemption: SIGTERM reaches one rank of a 2-rank job (as a node drain or a spot reclaim
does); both stop at the same step boundary, write one checkpoint, exit with the retryable
code, and the rerun continues mid-epoch to the same weights as an uninterrupted run."""

from __future__ import annotations

import re
import signal

import pytest

from fault_jobs import (STEPS_PER_EPOCH, assert_same_weights, fault_doc, final_weights, finish, history,
                        launch_ranks, logs, wait_for, write)
from graft.spec.contracts import PREEMPTED_EXIT_CODE
from graft_trainer import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.faults]


def test_sigterm_on_one_rank_checkpoints_both_and_the_rerun_is_bit_identical(tmp_path, reference):
    spec = write(fault_doc(tmp_path), tmp_path / "job.yaml")
    checkpoints = tmp_path / "out" / "checkpoints"
    ranks = launch_ranks(spec)
    wait_for(lambda: (checkpoints / "step-4").is_dir(), ranks, "the first mid-epoch checkpoint")
    ranks[1].send_signal(signal.SIGTERM)
    assert finish(ranks) == [PREEMPTED_EXIT_CODE, PREEMPTED_EXIT_CODE], logs(spec)[-3000:]

    stopped = logs(spec)
    where = re.findall(r"preempted: stopped at step (\d+) \(epoch (\d+), batch (\d+)\)", stopped)
    assert len(set(where)) == 1, where  # both ranks stopped at the same step
    step, epoch, batch = map(int, where[0])
    assert 0 < batch < STEPS_PER_EPOCH, "the stop should fall inside an epoch"
    lost = re.search(r"\((\d+) steps? and [\d.]+ s after SIGTERM reached this rank\)", stopped)
    assert lost and int(lost.group(1)) <= 1, stopped[-2000:]  # at most the step in flight ran on
    assert checkpoint.steps(checkpoints)[0] == checkpoints / f"step-{step}"
    assert checkpoint.problem(checkpoints / f"step-{step}") is None

    assert finish(launch_ranks(spec)) == [0, 0], logs(spec)[-3000:]
    assert f"resuming from {checkpoints / f'step-{step}'} (epoch {epoch}, batch {batch})" in logs(spec)
    assert_same_weights(reference.weights, final_weights(checkpoints))
    assert history(tmp_path / "out") == reference.history
