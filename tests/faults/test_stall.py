"""Hang detection: one rank of two is frozen (SIGSTOP, as a hung driver or a stuck NFS read
leaves it). The other rank's watchdog fails the job once no rank has progressed for
training.stallTimeoutSeconds, naming the frozen rank, its host, pid and last step, on stderr
and in the termination message, and kills the frozen process so the launcher can exit."""

from __future__ import annotations

import signal
import socket

import pytest

from fault_jobs import fault_doc, launch_ranks, logs, wait_for, write
from graft.spec.contracts import STALLED_EXIT_CODE

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.faults]

STALL_S = 5


def test_a_frozen_rank_fails_the_job_within_the_stall_timeout_naming_it(tmp_path):
    spec = write(fault_doc(tmp_path, training={"stallTimeoutSeconds": STALL_S}), tmp_path / "job.yaml")
    termination = tmp_path / "termination-log"
    ranks = launch_ranks(spec, GRAFT_TERMINATION_LOG=str(termination))
    try:
        wait_for(lambda: (tmp_path / "out" / "checkpoints" / "step-4").is_dir(), ranks, "training to start")
        ranks[1].send_signal(signal.SIGSTOP)
        # generous bound for a loaded machine; the watchdog fires after STALL_S without progress
        assert ranks[0].wait(timeout=STALL_S + 30) == STALLED_EXIT_CODE, logs(spec)[-3000:]
        assert ranks[1].wait(timeout=30) == -signal.SIGKILL  # the frozen rank was ended, not left behind
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    culprit = f"stuck: rank 1 on {socket.gethostname()} (pid {ranks[1].pid}, last step seen "
    assert f"training stalled: no rank made progress for {STALL_S} s" in logs(spec)
    assert culprit in logs(spec) and "its process is not running" in logs(spec)
    assert culprit in termination.read_text()
    assert "rank 0 on" not in termination.read_text()  # the healthy rank is not blamed
