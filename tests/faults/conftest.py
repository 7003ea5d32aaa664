"""The uninterrupted run every recovery is compared with, trained once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fault_jobs import fault_doc, final_weights, finish, history, launch_ranks, logs, write


@dataclass
class Reference:
    output: Path
    weights: dict
    history: list[dict]


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("uninterrupted")
    spec = write(fault_doc(root), root / "job.yaml")
    codes = finish(launch_ranks(spec))
    assert codes == [0, 0], logs(spec)[-3000:]
    return Reference(root / "out", final_weights(root / "out" / "checkpoints"), history(root / "out"))
