"""Ray backend: each FineTuneJob runs as a Ray job (Job Submission API) whose entrypoint is the
Ray Train path of the trainer, `python -m graft_trainer.ray_train spec.yaml`, the same entrypoint
the RayJob renderer puts on a KubeRay cluster. Submissions carry the job's name in their
metadata; the newest one is the job's state (a resume is a second submission).

With an `address` (the head's dashboard, e.g. 'http://head:8265', or $RAY_ADDRESS as for
`ray job submit`) jobs go to that cluster; the spec travels in the job's runtime_env
working_dir, so the spec's paths must be valid on the cluster (shared volumes or URLs). Without one, a local Ray head is started in this process
(`ray.init()`) and jobs run on this machine, their relative paths resolved against the current
directory; they live as long as this process (for jobs that outlive it, `ray start --head` and
pass its address).

Ray is imported on first use only: `import graft` must stay fast and torch-free.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from graft.backends.base import JobExists, JobNotFound, WaitTimeout
from graft.spec import FineTuneJob, parse_spec
from graft.spec.contracts import JOB_LABEL as JOB_KEY
from graft.spec.contracts import SPEC_ANNOTATION as SPEC_KEY
from graft.spec.contracts import read_progress, read_result
from graft.types import TERMINAL_PHASES, JobRef, JobStatus, Phase

ENTRY_MODULE = "graft_trainer.ray_train"
POLL_S = 1.0
STOP_TIMEOUT_S = 60.0
# Ray's job states in Graft's words; a stopped job keeps its Ray Train checkpoints, so a
# resubmission resumes from them: that is what Suspended means elsewhere too.
PHASES: dict[str, Phase] = {
    "PENDING": "Pending", "RUNNING": "Running", "SUCCEEDED": "Succeeded",
    "FAILED": "Failed", "STOPPED": "Suspended",
}
_ERROR_LINE = re.compile(r"\b\w+(Error|Exception|Exit)\b:")


class RayBackend:
    """Runs FineTuneJobs on a Ray cluster (address) or on a local Ray head started here."""

    def __init__(self, address: str | None = None):
        # RAY_ADDRESS names the dashboard for `ray job submit`; the same variable works here.
        self.address = address or os.environ.get("RAY_ADDRESS")
        self._client = None

    @property
    def client(self):
        """The JobSubmissionClient, connected on first use (starting a local head if needed)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.address or _local_head())
        return self._client

    # --- Backend protocol -------------------------------------------------------------------

    def submit(self, job: FineTuneJob) -> JobRef:
        name = job.metadata.name
        runs = self._submissions(name)
        if runs and not runs[-1].status.is_terminal():
            raise JobExists(f"Ray job '{name}' is {PHASES[runs[-1].status.value]}; delete it first "
                            f"(graft delete {name} --backend ray)")
        for run in runs:  # a finished run of the same name is replaced
            self.client.delete_job(run.submission_id)
        self._submit(name, job.to_document())
        return JobRef(name=name, backend="ray", kind="RayJobSubmission")

    def get(self, name: str) -> JobStatus:
        info = self._latest(name)
        return self._status(name, info, self.client.get_job_logs(info.submission_id))

    def list(self) -> list[JobStatus]:
        names = sorted({(j.metadata or {}).get(JOB_KEY) for j in self.client.list_jobs()} - {None})
        return [self.get(name) for name in names]

    def wait(
        self, name: str, until: tuple[Phase, ...] = TERMINAL_PHASES, timeout: float | None = None
    ) -> JobStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            phase = PHASES[self._latest(name).status.value]
            if phase in until:
                return self.get(name)
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"Ray job '{name}' is still {phase} after {timeout}s")
            time.sleep(POLL_S)

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        submission = self._latest(name).submission_id
        if follow:
            yield from _lines(_iterate(self.client.tail_job_logs(submission)))
        else:
            yield from self.client.get_job_logs(submission).splitlines()

    def events(self, name: str) -> list[str]:
        """Ray keeps no event stream per job: each submission's start and end are the events
        (a suspend/resume shows as a stopped submission followed by a new one)."""
        self._latest(name)  # raises JobNotFound
        events = []
        for run in self._submissions(name):
            events.append(f"{_iso(run.start_time)} Submitted {run.submission_id}: {run.entrypoint}")
            if run.end_time:
                message = (run.message or "").splitlines()[0] if run.message else ""
                events.append(f"{_iso(run.end_time)} {PHASES[run.status.value]}"
                              f"{': ' + message if message else ''}")
        return events

    def delete(self, name: str) -> None:
        self._stop(self._latest(name))
        for run in self._submissions(name):
            self.client.delete_job(run.submission_id)

    def suspend(self, name: str) -> None:
        """Stop the job; its Ray Train run keeps its checkpoints in storage for resume."""
        self._stop(self._latest(name))

    def resume(self, name: str) -> None:
        """Submit the same spec again: Ray Train restores the run of that name from its storage
        and the workers continue from its newest checkpoint."""
        info = self._latest(name)
        if info.status.value != "STOPPED":
            return
        self._submit(name, json.loads(info.metadata[SPEC_KEY]))
        self.wait(name, until=("Running", "Succeeded", "Failed"), timeout=60)

    def why(self, name: str) -> str:
        info = self._latest(name)
        phase = PHASES[info.status.value]
        text = f"Ray job '{name}' is {phase}."
        if phase == "Pending":
            text += (" Ray is preparing its runtime environment or waiting for the cluster to "
                     "have the CPUs/GPUs the workers ask for (resources.* in the spec).")
        elif phase == "Running":
            progress = latest_metrics(self.client.get_job_logs(info.submission_id))
            if "epoch" in progress:
                text += f" Epoch {progress['epoch']} of {progress.get('epochs', '?')} done"
                text += f", val_accuracy {progress['val_accuracy']:.4f}." if "val_accuracy" in progress else "."
        elif phase == "Failed":
            reason = (info.message or "").splitlines()[0] if info.message else ""
            log = self.client.get_job_logs(info.submission_id)
            errors = [line for line in log.splitlines() if _ERROR_LINE.search(line)]
            text += f" {reason}" if reason else ""
            text += f" Last error: {errors[-1].strip()}" if errors else ""
        elif phase == "Suspended":
            text += f" Resume it with `graft resume {name} --backend ray`."
        return text

    # --- helpers ----------------------------------------------------------------------------

    def _submit(self, name: str, document: dict[str, Any]) -> None:
        """Upload the spec as the job's working_dir and run the Ray entrypoint on it.

        Each submission gets a fresh id (`<name>-<random>`): Ray cannot reuse the id of a job
        it is still tearing down, and a resume is a new submission of the same job."""
        job = parse_spec(document)
        local = self.address is None
        python = sys.executable if local else "python"
        entrypoint = f"{python} -m {ENTRY_MODULE} spec.yaml"
        if local:  # same filesystem: relative paths mean what they mean here
            entrypoint += f" --base-dir {os.getcwd()!s}"
        with tempfile.TemporaryDirectory(prefix="graft-ray-") as workdir:
            Path(workdir, "spec.yaml").write_text(yaml.safe_dump(job.to_document(), sort_keys=False))
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=f"{name}-{uuid.uuid4().hex[:8]}",
                runtime_env={"working_dir": workdir, "env_vars": {"PYTHONUNBUFFERED": "1"}},
                metadata={JOB_KEY: name, SPEC_KEY: json.dumps(job.to_document())},
            )

    def _submissions(self, name: str) -> list:
        """Ray's submissions of the Graft job `name`, oldest first."""
        runs = [j for j in self.client.list_jobs() if (j.metadata or {}).get(JOB_KEY) == name]
        return sorted(runs, key=lambda j: j.start_time or 0)

    def _latest(self, name: str):
        runs = self._submissions(name)
        if not runs:
            raise JobNotFound(f"no Ray job named '{name}' on {self.address or 'the local Ray head'}")
        return runs[-1]

    def _stop(self, info) -> None:
        if info.status.is_terminal():
            return
        self.client.stop_job(info.submission_id)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not self.client.get_job_status(info.submission_id).is_terminal():
            if time.monotonic() > deadline:
                raise WaitTimeout(f"Ray job '{info.submission_id}' did not stop within {STOP_TIMEOUT_S:.0f}s")
            time.sleep(POLL_S)

    @staticmethod
    def _status(name: str, info, log_text: str) -> JobStatus:
        phase = PHASES[info.status.value]
        message = (info.message or "").splitlines()[0] if info.message else ""
        return JobStatus(
            name=name,
            phase=phase,
            message="" if phase == "Succeeded" else message,
            start_time=_datetime(info.start_time),
            completion_time=_datetime(info.end_time) if phase in TERMINAL_PHASES else None,
            metrics=latest_metrics(log_text),
        )


def latest_metrics(log_text: str) -> dict[str, Any]:
    """The final result if the run printed it, else the newest epoch's progress line (worker
    lines reach the job log behind Ray's '(RayTrainWorker pid=..) ' prefix)."""
    latest: dict[str, Any] = {}
    for line in log_text.splitlines():
        result = read_result(line)
        if result is not None:
            summary = result.summary.as_dict() if result.summary else {}
            return {**latest, **summary, "checkpoint": result.checkpoint}
        progress = read_progress(line)
        if progress is not None:
            latest = progress.as_dict()
    return latest


def _local_head() -> str:
    """Start (or reuse, in this process) a local Ray head and return its dashboard URL."""
    import ray

    context = ray.init(ignore_reinit_error=True, include_dashboard=True)
    if not context.dashboard_url:
        raise RuntimeError(
            "the local Ray head has no dashboard, which the Job Submission API needs; "
            "install ray[default] (pip install 'graft[ray]')"
        )
    return f"http://{context.dashboard_url}"


def _iterate(agen) -> Iterator[str]:
    """Drive an async generator (tail_job_logs) from synchronous code."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def _lines(chunks: Iterator[str]) -> Iterator[str]:
    partial = ""
    for chunk in chunks:
        partial += chunk
        *complete, partial = partial.split("\n")
        yield from complete
    if partial:
        yield partial


def _datetime(millis: int | None) -> datetime | None:
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc) if millis else None


def _iso(millis: int | None) -> str:
    moment = _datetime(millis)
    return moment.isoformat() if moment else "-"
