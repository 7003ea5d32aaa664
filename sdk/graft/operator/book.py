"""The one writer of FineTuneJob.status inside the operator.

Several watch handlers (FineTuneJob, child job, pods, log follower) report facts about the same
job concurrently. Each fact is merged into the last status this process wrote (or the status
the FineTuneJob watch last showed), under a per-job lock, and only real changes are patched,
at once and inside the lock: so the server sees the writes in the order they were merged,
handlers never overwrite each other's conditions and replays write nothing. (A status left in
kopf's handler patch would land only after the handler returned, possibly on top of a newer
write: a child failing the moment it was created left its FineTuneJob "Pending".)

The book also knows every job's current phase, which the `graft_finetunejobs` gauge exports.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from graft.operator import status as st
from graft.operator.kube import Kube


@dataclass(frozen=True)
class JobKey:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Transition:
    old_phase: str | None
    new_phase: str | None


class StatusBook:
    def __init__(self, kube: Kube):
        self.kube = kube
        self._written: dict[str, dict[str, Any]] = {}
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._phases: dict[str, str] = {}

    def apply(self, key: JobKey, seen: dict[str, Any] | None, update: dict[str, Any],
              write: bool = True) -> Transition | None:
        """Merge `update` into the job's status and write it (or, with `write=False`, only book
        it for the next write); the phase transition if the phase changed."""
        with self._locks[key.uid]:
            current = self._written.get(key.uid, seen or {})
            merged = st.merge(current, update)
            if merged is None:
                self._track(key.uid, current)
                return None
            if write:
                self.kube.patch_status(key.namespace, key.name, merged)
            self._written[key.uid] = merged
            self._track(key.uid, merged)
        old, new = current.get("phase"), merged.get("phase")
        return Transition(old, new) if old != new else None

    def observe(self, uid: str, status: dict[str, Any] | None) -> None:
        """The status the FineTuneJob watch shows, for jobs this process has not written to
        (e.g. ones that finished before it started): they count in their phase too."""
        with self._locks[uid]:
            if uid not in self._written:
                self._track(uid, status or {})

    def phase_counts(self) -> dict[str, int]:
        return dict(Counter(self._phases.copy().values()))  # copy(): atomic against writers

    def forget(self, uid: str) -> None:
        self._written.pop(uid, None)
        self._locks.pop(uid, None)
        self._phases.pop(uid, None)

    def _track(self, uid: str, status: dict[str, Any]) -> None:
        if status.get("phase"):
            self._phases[uid] = status["phase"]
