"""The one interface the Client drives; local, Kubernetes and Ray each implement it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from graft.spec import FineTuneJob
from graft.types import TERMINAL_PHASES, JobRef, JobStatus, Phase


class JobNotFound(LookupError):
    """No job of that name in this backend (the CLI exits 3)."""


class JobExists(RuntimeError):
    """A job of that name is already there and still active; nothing was submitted."""


class WaitTimeout(TimeoutError):
    """wait() gave up before the job reached one of the phases asked for."""


@runtime_checkable
class Backend(Protocol):
    def submit(self, job: FineTuneJob) -> JobRef: ...

    def get(self, name: str) -> JobStatus: ...

    def list(self) -> list[JobStatus]: ...

    def wait(
        self, name: str, until: tuple[Phase, ...] = TERMINAL_PHASES, timeout: float | None = None
    ) -> JobStatus: ...

    def logs(self, name: str, follow: bool = False) -> Iterator[str]: ...

    def events(self, name: str) -> list[str]: ...

    def delete(self, name: str) -> None: ...

    def suspend(self, name: str) -> None: ...

    def resume(self, name: str) -> None: ...

    def why(self, name: str) -> str: ...
