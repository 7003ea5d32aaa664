"""How the ranks of one job agree and watch each other, so a fault anywhere ends in one clear
decision instead of a hang or a split brain.

- **Shared checkpoint dir** (`start`): rank 0 writes a fresh nonce into the checkpoint dir and
  every rank must read it back; a node that does not share the directory would resume from
  another checkpoint than rank 0 (or none), so the job is refused at start. The nonce also
  names this attempt in the files below.
- **Preemption** (`agree`): SIGTERM only sets a flag; every step all ranks sum their flags
  (and bad-sample counts) in one small all_reduce, so all of them stop at the same step
  boundary and write one checkpoint together.
- **Watchdog** (a daemon thread per rank): writes this rank's heartbeat file (step, progress
  counter, state) every interval; raises the alarm for everyone when the first rank fails
  (`fail` writes `failed.json`, peers see it within an interval and exit instead of waiting in
  a collective); and on the watching ranks (the first and the last, so one frozen watcher is
  named by the other) fails the job when no rank has made progress for
  `training.stallTimeoutSeconds`, naming the stuck ranks, their hosts and last steps.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from graft.fsutil import atomic_write
from graft.spec import FineTuneJob, SpecError
from graft.spec.contracts import (
    COORDINATION_DIR,
    FAILURE_FILE,
    HEARTBEAT_FILE,
    PEER_FAILED_EXIT_CODE,
    SHARED_CHECK_FILE,
    STALLED_EXIT_CODE,
)
from graft_trainer.report import write_termination_message

log = logging.getLogger("graft.coordination")

WAITING = "waiting"  # in the step's agreement: ready for the others
CHECKPOINTING = "checkpointing"  # one long write without progress: not a stall
STARTING = "starting"  # reading data, building the model, caching features: the collective
# timeout covers it; the stall watch starts with the first step
NOT_STALLS = {STARTING, CHECKPOINTING}


class Preempted(Exception):
    """Every rank stopped at a step boundary after SIGTERM; the checkpoint is written."""


@dataclass
class _Seen:
    """What a watcher last read of one rank, and when (its own clock) it last changed."""

    beat_at: float
    progress_at: float
    beat: int = -1
    progress: int = -1
    record: dict = field(default_factory=dict)


class Coordinator:
    def __init__(self, job: FineTuneJob, accelerator):
        self.accelerator = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.dir = Path(job.spec.checkpoint_dir) / COORDINATION_DIR
        self.stall_timeout = float(job.spec.training.stall_timeout_seconds)
        self.interval = min(5.0, max(0.2, self.stall_timeout / 10))
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.attempt = ""
        self.step = self.progress = 0
        self.state = STARTING
        self.stop_requested_at: float | None = None  # when SIGTERM reached this rank
        self.stop_requested_step = 0  # and at which step
        self.failing = False
        self._closed = threading.Event()
        self._previous_handler = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ start (collective)

    def start(self, where: str) -> None:
        """Agree on this attempt's nonce and check that every rank shares the checkpoint dir
        (`where` names the spec field); then install the SIGTERM handler and the watchdog."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self.attempt = secrets.token_hex(8)
            (self.dir / FAILURE_FILE).unlink(missing_ok=True)  # a previous attempt's alarm
            atomic_write(self.dir / SHARED_CHECK_FILE, self.attempt)
        if self.world > 1:
            box = [self.attempt]
            torch.distributed.broadcast_object_list(box, src=0)
            self.attempt = box[0]
            views: list = [None] * self.world
            torch.distributed.all_gather_object(views, (self.rank, self.host, self._sees(self.attempt)))
            blind = [(rank, host) for rank, host, ok in views if not ok]
            if blind:
                ranks = ", ".join(f"rank {rank} on {host}" for rank, host in blind[:8])
                ranks += f" and {len(blind) - 8} more ranks" if len(blind) > 8 else ""
                raise SpecError([
                    f"{where}: '{self.dir.parent}' is not shared by every node: {ranks} cannot see what "
                    f"rank 0 on {views[0][1]} wrote there, so the ranks would resume from different checkpoints; "
                    "mount one shared volume there on every node (spec.kubernetes.volumes, e.g. a "
                    "ReadWriteMany persistentVolumeClaim) or point checkpoint.dir at shared storage"
                ])
        if threading.current_thread() is threading.main_thread():  # Ray Train runs the loop in a thread
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._beat(0)
        self._thread = threading.Thread(target=self._watch, name="graft-watchdog", daemon=True)
        self._thread.start()

    def _sees(self, nonce: str, patience_s: float = 5.0) -> bool:
        """Whether this rank reads rank 0's nonce; re-read for a few seconds, as a network
        filesystem may serve a cached directory listing for a moment after the rename."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                if (self.dir / SHARED_CHECK_FILE).read_text() == nonce:
                    return True
            except OSError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)

    def close(self) -> None:
        """Stop the watchdog and give SIGTERM back (fit may run again in this process). The
        thread is joined: one still running while the interpreter shuts down aborts it."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)

    # ------------------------------------------------------------------ main-thread API

    def advance(self, step: int | None = None) -> None:
        """Record progress (a training step, a validation batch): cheap, no I/O."""
        self.progress += 1
        if step is not None:
            self.step = step
        if self.state == STARTING:
            self.state = "training"

    def ticking(self, batches: Iterable) -> Iterator:
        """`batches`, counting each one as progress (validation, target evaluation)."""
        for batch in batches:
            yield batch
            self.advance()

    @contextmanager
    def busy(self, state: str):
        """Run a block in `state` (e.g. CHECKPOINTING: long, without progress, not a stall)."""
        previous, self.state = self.state, state
        try:
            yield
        finally:
            self.state = previous
            self.progress += 1

    def agree(self, bad_samples: int) -> tuple[bool, int]:
        """(stop now?, bad samples over all ranks): one all_reduce, at a step boundary."""
        if self.world == 1:
            return self.stop_requested_at is not None, bad_samples
        flags = torch.tensor([float(self.stop_requested_at is not None), float(bad_samples)],
                             dtype=torch.float64, device=self.accelerator.device)
        previous, self.state = self.state, WAITING
        torch.distributed.all_reduce(flags)
        self.state = "training" if previous == STARTING else previous
        stop, bad = flags.tolist()
        return stop > 0, int(bad)

    def fail(self, error: BaseException, *, own: bool) -> None:
        """Tell every other rank that this one failed (the first failure wins). An error that
        is not this rank's `own` (a collective broken because a peer exited) gives way to the
        peer's recorded failure, which is then what this rank reports."""
        self.failing = True  # from here the main thread reports its own error; the watchdog stays quiet
        if not self.attempt:
            return
        peer = self._peer_failure()
        if peer and not own:
            self._exit(self._peer_message(peer), PEER_FAILED_EXIT_CODE)
        text = f"{type(error).__name__}: {error}".strip()
        record = {"attempt": self.attempt, "rank": self.rank, "host": self.host, "error": text}
        self._claim_failure(record)

    def _on_sigterm(self, signum, frame) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at, self.stop_requested_step = time.monotonic(), self.step
            print(f"rank {self.rank}: SIGTERM received; stopping at the next step boundary to checkpoint",
                  file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the watchdog thread

    def _beat(self, beat: int) -> None:
        record = {"attempt": self.attempt, "rank": self.rank, "host": self.host, "pid": self.pid,
                  "step": self.step, "progress": self.progress, "state": self.state, "beat": beat}
        atomic_write(self.dir / HEARTBEAT_FILE.format(rank=self.rank), json.dumps(record), durable=False)

    def _watch(self) -> None:
        watching = self.rank in {0, self.world - 1}
        now = time.monotonic()
        seen = {rank: _Seen(now, now) for rank in range(self.world)} if watching else {}
        beat = 0
        while not self._closed.wait(self.interval):
            beat += 1
            try:
                self._beat(beat)
                self._check_failure()
                if watching:
                    self._check_stall(seen)
            except OSError as exc:  # a flaky shared filesystem must not kill training by itself
                log.warning("watchdog: %s", exc)

    def _peer_failure(self) -> dict | None:
        """The failure another rank recorded in this attempt, if any."""
        try:
            record = json.loads((self.dir / FAILURE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if record.get("attempt") != self.attempt or record.get("rank") == self.rank:
            return None
        return record

    def _peer_message(self, record: dict) -> str:
        return f"rank {self.rank} stops: rank {record['rank']} on {record['host']} failed: {record['error']}"

    def _check_failure(self) -> None:
        peer = None if self.failing else self._peer_failure()
        if peer:
            self._exit(self._peer_message(peer), PEER_FAILED_EXIT_CODE)

    def _check_stall(self, seen: dict[int, _Seen]) -> None:
        now = time.monotonic()
        for rank, entry in seen.items():
            try:
                record = json.loads((self.dir / HEARTBEAT_FILE.format(rank=rank)).read_text())
            except (OSError, ValueError):
                continue
            if record.get("attempt") != self.attempt:
                continue
            entry.record = record
            if record["beat"] != entry.beat:
                entry.beat, entry.beat_at = record["beat"], now
            alive = now - entry.beat_at < self.stall_timeout / 2  # a frozen rank's last state is stale
            if record["progress"] != entry.progress or (record["state"] in NOT_STALLS and alive):
                entry.progress, entry.progress_at = record["progress"], now
        if now - max(entry.progress_at for entry in seen.values()) < self.stall_timeout:
            return
        frozen = [r for r, e in seen.items() if now - e.beat_at >= self.stall_timeout / 2]
        busy = [r for r, e in seen.items() if e.record.get("state") != WAITING]
        stuck = frozen or busy or list(seen)

        def who(rank: int) -> str:
            record = seen[rank].record
            if not record:
                return f"rank {rank} (no heartbeat yet)"
            how = "its process is not running" if rank in frozen else f"busy in {record['state']}"
            return f"rank {rank} on {record['host']} (pid {record['pid']}, last step seen {record['step']}, {how})"

        waiting = [seen[r].record["step"] for r in seen if r not in stuck and seen[r].record]
        message = (f"training stalled: no rank made progress for {self.stall_timeout:.0f} s "
                   f"(training.stallTimeoutSeconds); stuck: {'; '.join(who(r) for r in stuck)}"
                   + (f"; the other ranks wait at step {max(waiting)}" if waiting else ""))
        self._claim_failure({"attempt": self.attempt, "rank": self.rank, "host": self.host, "error": message})
        for rank in frozen:  # a frozen rank on this host would keep its launcher waiting on it
            record = seen[rank].record
            if record and record["host"] == self.host and record["pid"] != self.pid:
                try:
                    os.kill(record["pid"], signal.SIGKILL)
                except OSError:
                    pass
        self._exit(message, STALLED_EXIT_CODE)

    def _claim_failure(self, record: dict) -> None:
        """Publish `record` as the failure of this attempt unless another rank's came first."""
        path = self.dir / FAILURE_FILE
        try:
            current = json.loads(path.read_text())
            if current.get("attempt") == self.attempt:
                return
        except (OSError, ValueError):
            pass
        atomic_write(path, json.dumps(record))

    def _exit(self, message: str, code: int) -> None:
        """End this process from the watchdog thread (the main one may sit in a collective)."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        write_termination_message(message)
        sys.stdout.flush()
        os._exit(code)
