"""kmock's in-memory Kubernetes API *emulator* on loopback, plus the operator as a real process.

Shared by tests/operator and bench/bench_operator.py. The emulator is not an API server: no
uids, resourceVersions, defaulting, garbage collection or selectors. Objects are created with
a uid set by the caller (as an API server would assign one), and assertions are about what the
operator stored, requested and reacted to, never about server semantics the emulator lacks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import kmock
import yaml

from graft.backends.local import free_port

VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
CORE_RESOURCES = {"namespaces": ("Namespace", False), "configmaps": ("ConfigMap", True),
                  "events": ("Event", True), "pods": ("Pod", True)}


class Emulator:
    """Runs kmock.KubernetesEmulator + Server in a background thread's event loop."""

    def __init__(self, crds: list[dict[str, Any]]):
        self.crds = crds
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="kmock-emulator")

    def __enter__(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the kmock emulator did not start within 20 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            self.handler = handler
            for plural, (kind, namespaced) in CORE_RESOURCES.items():
                handler.resources[f"v1/{plural}"] = kmock.ResourceInfo(
                    kind=kind, namespaced=namespaced, verbs=VERBS, subresources=["status"])
            for crd in self.crds:
                declare_crd(handler, crd)
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def request_count(self) -> int:
        """Requests the emulator has answered so far (watch streams count once)."""
        async def count() -> int:
            return len(list(self.handler))
        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(60)

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
        }))
        return path


def declare_crd(handler: kmock.KubernetesEmulator, crd: dict[str, Any]) -> None:
    """Serve a CustomResourceDefinition's resource the way an API server would list it."""
    names, group = crd["spec"]["names"], crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if version.get("served", True):
            handler.resources[f"{group}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names["kind"], singular=names.get("singular"),
                namespaced=crd["spec"]["scope"] == "Namespaced", verbs=VERBS,
                shortnames=names.get("shortNames", []),
                subresources=list(version.get("subresources") or {}),
            )


class OperatorProcess:
    """`python -m graft.operator --standalone` against the emulator, ready once kopf's liveness
    endpoint answers (the operator has started watching); its Prometheus metrics at
    `metrics_url`, as the Deployment serves them."""

    def __init__(self, kubeconfig: Path, log_path: Path):
        self.kubeconfig, self.log_path = kubeconfig, log_path

    def __enter__(self) -> OperatorProcess:
        port, metrics_port = free_port(), free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graft.operator", "--standalone",
             "--liveness", f"http://127.0.0.1:{port}/healthz", "--metrics-port", str(metrics_port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"operator not ready in 60 s:\n{self.log_path.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_for(condition, timeout: float = 60.0, interval: float = 0.05):
    """Poll `condition()` until it returns something truthy; the value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
