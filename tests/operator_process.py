"""The operator as a real process (`python -m graft.operator --standalone`) against an API
endpoint, and the polling helper the emulator tests wait with. Shared by tests/operator and
bench/bench_operator.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from graft.backends.local import free_port


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
        self._log = self.log_path.open(getattr(self, "_log_mode", "w"))
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

    def kill(self, sig: int = 9) -> None:
        """A fault: signal the operator process (kill -9 by default) and reap it."""
        self.proc.send_signal(sig)
        self.proc.wait(20)
        self._log.close()

    def restart(self) -> OperatorProcess:
        """A fresh operator process after kill(); its log is appended to the same file."""
        self._log_mode = "a"
        return self.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is not None:
            self._log.close()
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

