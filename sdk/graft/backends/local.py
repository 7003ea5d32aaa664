"""Local backend: the trainer as N real processes on this machine, launched the way torchrun
launches them inside a PyTorchJob pod, so a spec that works here works on the cluster.

Each job lives in `$GRAFT_HOME/jobs/<name>/` (default `~/.graft`): the spec, `state.json`,
the merged log and an event log. A detached supervisor process owns the ranks and is the only
writer of `state.json`, so `graft get/logs/wait/delete` work from any other shell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import yaml

from graft.backends.base import JobExists, JobNotFound, WaitTimeout
from graft.spec import FineTuneJob
from graft.spec.contracts import read_progress
from graft.types import TERMINAL_PHASES, JobRef, JobStatus, Phase

STOP_GRACE_S = 10.0
FOLLOW_INTERVAL_S = 0.1  # local files: a short sleep on EOF is what `tail -f` does too


def graft_home() -> Path:
    return Path(os.environ.get("GRAFT_HOME") or Path.home() / ".graft")


def rank_env(rank: int, nproc: int, master_port: int) -> dict[str, str]:
    """The variables a PyTorchJob pod's trainer process sees: the operator's PET_* for
    torchrun, what torchrun exports to each worker (single node, no restarts) and the trainer
    image's PYTHONUNBUFFERED (so logs stream). Left out:
    TORCHELASTIC_USE_AGENT_STORE and TORCHELASTIC_ERROR_FILE, which point at torchrun's agent."""
    env = {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(master_port),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(nproc),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": "1",
        "ROLE_NAME": "default",
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(nproc),
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_RUN_ID": "none",
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = "1"  # torchrun's default, so N ranks do not oversubscribe cores
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class JobDir:
    """The files of one local job; `state.json` is replaced atomically so readers never see
    half a write."""

    def __init__(self, home: Path, name: str):
        self.path = home / "jobs" / name
        self.name = name

    spec = property(lambda self: self.path / "spec.yaml")
    state_file = property(lambda self: self.path / "state.json")
    log = property(lambda self: self.path / "logs.txt")
    event_log = property(lambda self: self.path / "events.txt")

    def exists(self) -> bool:
        return self.state_file.is_file()

    def read(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise JobNotFound(f"no local job named '{self.name}' in {self.path.parent}") from None

    def write(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def event(self, text: str) -> None:
        with self.event_log.open("a") as f:
            f.write(f"{_now()} {text}\n")


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
        jobdir.write({
            "name": job.metadata.name, "phase": "Pending", "message": "", "nproc": nproc,
            "cwd": os.getcwd(), "created": _now(), "metrics": {},
        })
        jobdir.event(f"Created job with {nproc} process(es)")
        self._start_supervisor(jobdir)
        return JobRef(name=job.metadata.name, backend="local", kind="processes")

    def _start_supervisor(self, jobdir: JobDir) -> None:
        with jobdir.path.joinpath("supervisor.err").open("a") as supervisor_err:
            subprocess.Popen(
                [sys.executable, "-m", "graft.backends.local", str(jobdir.path)],
                start_new_session=True,  # outlives this shell; its ranks share its process group
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=supervisor_err,
            )

    def _state(self, jobdir: JobDir) -> JobStatus:
        state = jobdir.read()
        if state["phase"] in ("Pending", "Running") and "supervisor_pid" in state:
            if not _alive(state["supervisor_pid"]):
                state["phase"] = "Failed"
                state["message"] = f"supervisor process {state['supervisor_pid']} died"
        return JobStatus(
            name=state["name"], phase=state["phase"], message=state.get("message", ""),
            start_time=state.get("start_time"), completion_time=state.get("completion_time"),
            metrics=state.get("metrics", {}),
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
        for it; if it does not go, kill its whole process group."""
        state = self._dir(name).read()
        pid = state.get("supervisor_pid")
        if state["phase"] in ("Pending", "Running") and _alive(pid):
            os.kill(pid, sig)
            deadline = time.monotonic() + STOP_GRACE_S + 5
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


class Supervisor:
    """Runs in its own process: starts the ranks, merges their output into one log with a
    `[rank N]` prefix, stops the others when one fails, and records the outcome."""

    def __init__(self, jobdir: JobDir):
        self.jobdir = jobdir
        self.state = jobdir.read()
        self.lock = threading.Lock()
        self.procs: dict[int, tuple[int, subprocess.Popen]] = {}  # pid -> (rank, process)
        self.stopping: str | None = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop("stopped by user"))
        signal.signal(signal.SIGUSR1, lambda *_: self._stop("suspend"))
        self._update(phase="Pending", supervisor_pid=os.getpid())
        nproc, port = self.state["nproc"], free_port()
        with self.jobdir.log.open("a", buffering=1) as log:
            for rank in range(nproc):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "graft_trainer", str(self.jobdir.spec)],
                    cwd=self.state["cwd"], env={**os.environ, **rank_env(rank, nproc, port)},
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True, errors="replace",
                )
                self.procs[proc.pid] = (rank, proc)
            self._update(phase="Running", message="",
                         rank_pids=[p.pid for _, p in sorted(self.procs.values(), key=lambda v: v[0])],
                         start_time=self.state.get("start_time") or _now())
            self.jobdir.event(f"Started {nproc} rank(s), MASTER_ADDR=127.0.0.1 MASTER_PORT={port}")
            pumps = [threading.Thread(target=self._pump, args=(rank, proc, log))
                     for rank, proc in self.procs.values()]
            for pump in pumps:
                pump.start()
            failure = self._reap()
            for pump in pumps:
                pump.join()
        return self._finish(failure)

    def _pump(self, rank: int, proc: subprocess.Popen, log) -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            with self.lock:
                log.write(f"[rank {rank}] {line}\n")
            progress = read_progress(line) if rank == 0 else None
            if progress is not None:
                self._update(metrics=progress.as_dict())

    def _reap(self) -> tuple[int, int] | None:
        """Wait for every rank; the first non-zero exit stops the rest (like torchrun)."""
        failure, running = None, dict(self.procs)
        while running:
            pid, status = os.waitpid(-1, 0)
            if pid not in running:
                continue
            rank, proc = running.pop(pid)
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            self.jobdir.event(f"rank {rank} {_describe_exit(code)}")
            if code != 0 and failure is None and not self.stopping:
                failure = (rank, code)
                self.jobdir.event(f"stopping the other ranks after rank {rank} failed")
                self._terminate_all()
        return failure

    def _stop(self, reason: str) -> None:
        self.stopping = reason
        self._terminate_all()

    def _terminate_all(self) -> None:
        self._signal_ranks(signal.SIGTERM)
        timer = threading.Timer(STOP_GRACE_S, self._kill_all)
        timer.daemon = True
        timer.start()

    def _kill_all(self) -> None:
        self._signal_ranks(signal.SIGKILL)

    def _signal_ranks(self, sig: signal.Signals) -> None:
        """os.kill, not Popen.send_signal: that polls, and would reap a rank behind _reap's back."""
        for _, proc in self.procs.values():
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass

    def _finish(self, failure: tuple[int, int] | None) -> int:
        if self.stopping == "suspend":
            phase, message = "Suspended", "suspended; resume restarts from the newest checkpoint"
        elif self.stopping:
            phase, message = "Failed", self.stopping
        elif failure:
            phase, message = "Failed", f"rank {failure[0]} {_describe_exit(failure[1])}"
        else:
            phase, message = "Succeeded", ""
        self.jobdir.event(f"{phase}{': ' + message if message else ''}")
        self._update(phase=phase, message=message, completion_time=_now() if phase != "Suspended" else None)
        return 0 if phase != "Failed" else 1

    def _update(self, **changes) -> None:
        with self.lock:
            self.state.update(changes)
            self.jobdir.write(self.state)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name} (exit code {128 - code})"
    return f"exited with code {code}"


if __name__ == "__main__":
    job_path = Path(sys.argv[1])
    sys.exit(Supervisor(JobDir(job_path.parent.parent, job_path.name)).run())
