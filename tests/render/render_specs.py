"""The reference specs the renderer tests and the benchmark share (one per target)."""

from __future__ import annotations

from pathlib import Path

from graft.spec import FineTuneJob, load_spec

SPECS = Path(__file__).parent / "specs"
TARGETS = ("pytorchjob", "rayjob", "trainjob")


def reference_spec(target: str) -> FineTuneJob:
    return load_spec(SPECS / f"{target}.yaml")
