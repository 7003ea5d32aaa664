"""Local backend: the trainer as N real processes on this machine, launched by torchrun
(`torch.distributed.run`, the launcher a PyTorchJob pod runs), so a spec that works here works
on the cluster.

Each job lives in `$GRAFT_HOME/jobs/<name>/` (default `~/.graft`; the files are named in
graft.spec.contracts): the spec, `state.json`, the merged log (every line `[rank N] ...`), each
rank's own log and an event log. A detached supervisor, `python -m graft_trainer.launcher`,
runs torchrun's launcher and is the only writer of `state.json` once it runs, so
`graft get/logs/wait/delete` work from any other shell.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import yaml

from graft.backends.base import JobExists, JobNotFound, WaitTimeout
from graft.fsutil import atomic_write
from graft.spec import FineTuneJob
from graft.spec.contracts import (
    GRACE_MARGIN_SECONDS, LOCAL_EVENTS, LOCAL_LOG, LOCAL_SPEC, LOCAL_STATE, LocalState, event_line,
    latest_progress,
)
from graft.spec.extras import EXTRAS, MissingExtra
from graft.types import TERMINAL_PHASES, JobRef, JobStatus, Phase

LAUNCHER = "graft_trainer.launcher"
FOLLOW_INTERVAL_S = 0.1  # local files: a short sleep on EOF is what `tail -f` does too
METRICS_TAIL_BYTES = 64 * 1024  # the newest progress line is near the end of the log


def graft_home() -> Path:
    return Path(os.environ.get("GRAFT_HOME") or Path.home() / ".graft")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class JobDir:
    """The files of one local job; `state.json` is replaced atomically so readers never see
    half a write."""

    def __init__(self, home: Path, name: str):
        self.path = home / "jobs" / name
        self.name = name

    spec = property(lambda self: self.path / LOCAL_SPEC)
    state_file = property(lambda self: self.path / LOCAL_STATE)
    log = property(lambda self: self.path / LOCAL_LOG)
    event_log = property(lambda self: self.path / LOCAL_EVENTS)

    def exists(self) -> bool:
        return self.state_file.is_file()

    def read(self) -> LocalState:
        try:
            return LocalState.model_validate_json(self.state_file.read_text())
        except FileNotFoundError:
            raise JobNotFound(f"no local job named '{self.name}' in {self.path.parent}") from None

    def write(self, state: LocalState) -> None:
        atomic_write(self.state_file, state.model_dump_json(indent=1))

    def event(self, text: str) -> None:
        with self.event_log.open("a") as f:
            f.write(event_line(text, _now()))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:  # reap it if it is our own child, else a zombie would look alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalBackend:
    """Runs jobs as local processes; `nproc` overrides resources.procsPerNode × nodes."""

    def __init__(self, home: str | Path | None = None, nproc: int | None = None):
        self.home = Path(home) if home else graft_home()
        self.nproc = nproc

    def _dir(self, name: str) -> JobDir:
        return JobDir(self.home, name)

    def submit(self, job: FineTuneJob) -> JobRef:
        _require_installed(job)
        jobdir = self._dir(job.metadata.name)
        if jobdir.exists():
            state = self._state(jobdir)
            if state.phase not in TERMINAL_PHASES:
                raise JobExists(
                    f"local job '{job.metadata.name}' is {state.phase}; delete it first "
                    f"(graft delete {job.metadata.name} --backend local)"
                )
            shutil.rmtree(jobdir.path)  # a finished run of the same name is replaced, like a rerun
        jobdir.path.mkdir(parents=True)
        jobdir.spec.write_text(yaml.safe_dump(job.to_document(), sort_keys=False))
        nproc = self.nproc or job.spec.resources.world_size
        jobdir.write(LocalState(name=job.metadata.name, phase="Pending", nproc=nproc, cwd=os.getcwd(),
                                master_port=free_port(), grace_s=job.spec.checkpoint.grace_period_seconds,
                                created=_now()))
        jobdir.event(f"Created job with {nproc} process(es)")
        self._start_supervisor(jobdir)
        return JobRef(name=job.metadata.name, backend="local", kind="processes")

    def _start_supervisor(self, jobdir: JobDir) -> None:
        """The launcher's output (the ranks' lines, prefixed) is the job's merged log."""
        with jobdir.log.open("a") as log:
            subprocess.Popen(
                [sys.executable, "-m", LAUNCHER, str(jobdir.path)],
                start_new_session=True,  # outlives this shell; its ranks share its process group
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the trainer image's ENV: logs stream
            )

    def _state(self, jobdir: JobDir) -> JobStatus:
        state = jobdir.read()
        if state.phase in ("Pending", "Running") and state.supervisor_pid and not _alive(state.supervisor_pid):
            state.phase, state.message = "Failed", f"supervisor process {state.supervisor_pid} died"
        return JobStatus(
            name=state.name, phase=state.phase, message=state.message, start_time=state.start_time,
            completion_time=state.completion_time, metrics=_latest_metrics(jobdir),
        )

    def get(self, name: str) -> JobStatus:
        return self._state(self._dir(name))

    def list(self) -> list[JobStatus]:
        jobs = self.home / "jobs"
        names = sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []
        return [self.get(n) for n in names if self._dir(n).exists()]

    def wait(
        self, name: str, until: tuple[Phase, ...] = TERMINAL_PHASES, timeout: float | None = None
    ) -> JobStatus:
        """Re-reads the local state file: a cheap file read, with no API to watch."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.get(name)
            if status.phase in until:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job '{name}' is still {status.phase} after {timeout}s")
            time.sleep(FOLLOW_INTERVAL_S)

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        jobdir = self._dir(name)
        jobdir.read()  # raises JobNotFound
        if not jobdir.log.exists():
            jobdir.log.touch()
        with jobdir.log.open() as f:
            partial = ""
            while True:
                chunk = f.readline()
                if chunk:
                    partial += chunk
                    if partial.endswith("\n"):
                        yield partial.rstrip("\n")
                        partial = ""
                    continue
                if not follow or self.get(name).finished or self.get(name).phase == "Suspended":
                    rest = f.read()  # the supervisor flushes the last lines before its final state
                    for line in (partial + rest).splitlines():
                        yield line
                    return
                time.sleep(FOLLOW_INTERVAL_S)

    def events(self, name: str) -> list[str]:
        jobdir = self._dir(name)
        jobdir.read()
        return jobdir.event_log.read_text().splitlines() if jobdir.event_log.exists() else []

    def _signal_supervisor(self, name: str, sig: signal.Signals) -> None:
        """Ask the supervisor to stop its ranks (SIGTERM: for good, SIGUSR1: suspend) and wait
        for it, as long as a pod would be given; if it does not go, kill its process group."""
        state = self._dir(name).read()
        pid = state.supervisor_pid
        if state.phase in ("Pending", "Running") and _alive(pid):
            os.kill(pid, sig)
            deadline = time.monotonic() + state.grace_s + GRACE_MARGIN_SECONDS
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(FOLLOW_INTERVAL_S)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)

    def delete(self, name: str) -> None:
        self._signal_supervisor(name, signal.SIGTERM)
        shutil.rmtree(self._dir(name).path)

    def suspend(self, name: str) -> None:
        """Stop the ranks but keep the job, as Kubeflow's suspend deletes the pods."""
        self._signal_supervisor(name, signal.SIGUSR1)

    def resume(self, name: str) -> None:
        """Start the ranks again; the trainer auto-resumes from its newest checkpoint."""
        jobdir = self._dir(name)
        if self.get(name).phase != "Suspended":
            return
        jobdir.write(jobdir.read().model_copy(update={"master_port": free_port()}))
        jobdir.event("Resumed")
        self._start_supervisor(jobdir)
        self.wait(name, until=("Running", "Succeeded", "Failed"), timeout=30)

    def why(self, name: str) -> str:
        status = self.get(name)
        text = f"Local job '{name}' is {status.phase}."
        if status.message:
            text += f" {status.message}."
        if status.phase == "Failed":
            rank_lines = [line for line in self.logs(name) if line.startswith("[rank")]
            if rank_lines:
                text += f" Last log line: {rank_lines[-1]}"
        elif status.phase == "Suspended":
            text += f" Resume it with `graft resume {name} --backend local`."
        return text


def _require_installed(job: FineTuneJob) -> None:
    """Refuse to start ranks that could only fail importing: torchrun and the trainer need the
    trainer extra, remote locations their filesystem's extra."""
    needed = dict.fromkeys(EXTRAS["trainer"], "to train")
    locations = (job.spec.data.train, job.spec.data.validation, job.spec.data.target, job.spec.output.dir)
    for location in filter(None, locations):
        scheme = location.split("://")[0] if "://" in location else ""
        module = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(scheme)
        if module:
            needed[module] = f"to read {location}"
    for module, purpose in needed.items():
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(module, purpose)


def _latest_metrics(jobdir: JobDir) -> dict:
    """Rank 0's newest progress line, from the end of the merged log."""
    if not jobdir.log.exists():
        return {}
    with jobdir.log.open("rb") as f:
        f.seek(max(0, jobdir.log.stat().st_size - METRICS_TAIL_BYTES))
        tail = f.read().decode(errors="replace").splitlines()
    progress = latest_progress(line for line in tail if line.startswith("[rank 0] "))
    return progress.as_dict() if progress else {}
