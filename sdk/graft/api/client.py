"""`graft.Client`: the same verbs for a local run, a Kubernetes cluster or a Ray cluster, in the
shape of the Kubeflow SDK's TrainerClient (a client bound to one backend, jobs named by string).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from graft.backends.base import Backend
from graft.spec import FineTuneJob, load_spec, parse_spec
from graft.types import TERMINAL_PHASES, JobRef, JobStatus, Phase

BackendName = Literal["local", "kubernetes", "ray"]
_BACKENDS = {
    "local": ("graft.backends.local", "LocalBackend"),
    "kubernetes": ("graft.backends.kubernetes", "KubernetesBackend"),
    "ray": ("graft.backends.ray", "RayBackend"),
}


def as_job(spec: FineTuneJob | dict[str, Any] | str | Path) -> FineTuneJob:
    """Accept what users have at hand: a parsed job, a mapping, or a path to a YAML file."""
    if isinstance(spec, FineTuneJob):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec)
    return load_spec(spec)


class Client:
    """Submit and follow FineTuneJobs; `opts` go to the backend (e.g. namespace, kubeconfig,
    context for kubernetes; home, nproc for local; address for ray)."""

    def __init__(self, backend: BackendName = "local", **opts: Any):
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {sorted(_BACKENDS)}, not {backend!r}")
        module, cls = _BACKENDS[backend]
        self.backend_name = backend
        # Imported on demand: the kubernetes client and ray are heavy, and `import graft` stays fast.
        self.backend: Backend = getattr(importlib.import_module(module), cls)(**opts)

    def submit(self, spec: FineTuneJob | dict[str, Any] | str | Path) -> JobRef:
        """Validate first (SpecError lists every problem), then start the job."""
        return self.backend.submit(as_job(spec))

    def get(self, name: str) -> JobStatus:
        return self.backend.get(name)

    def list(self) -> list[JobStatus]:
        return self.backend.list()

    def wait(
        self, name: str, until: tuple[Phase, ...] = TERMINAL_PHASES, timeout: float | None = None
    ) -> JobStatus:
        return self.backend.wait(name, until=until, timeout=timeout)

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        return self.backend.logs(name, follow=follow)

    def events(self, name: str) -> list[str]:
        return self.backend.events(name)

    def delete(self, name: str) -> None:
        self.backend.delete(name)

    def suspend(self, name: str) -> None:
        self.backend.suspend(name)

    def resume(self, name: str) -> None:
        self.backend.resume(name)

    def why(self, name: str) -> str:
        """One plain paragraph on why a job is not running (or how it ended)."""
        return self.backend.why(name)
