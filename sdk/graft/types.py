"""What every backend returns, so callers read a job the same way wherever it runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
TERMINAL_PHASES: tuple[Phase, ...] = ("Succeeded", "Failed")


class JobRef(BaseModel):
    """Handle returned by submit: enough to find the job again from another process."""

    name: str
    backend: Literal["local", "kubernetes", "ray"]
    namespace: str | None = None
    kind: str | None = Field(default=None, description="The object that is the job: FineTuneJob, or the "
                             "child kind (e.g. PyTorchJob) when it was created directly.")
    note: str | None = Field(default=None, description="Something the submitter should know, for a person.")


class JobStatus(BaseModel):
    """A job's state, mapped from the backend's own vocabulary (conditions, exit codes)."""

    name: str
    phase: Phase
    message: str = ""
    start_time: datetime | None = None
    completion_time: datetime | None = None
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Latest graft-progress line or the final summary."
    )

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES
