"""Fixtures for the SDK tests: a tiny real spec and an isolated GRAFT_HOME (the Kubernetes
tests use the real control plane from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdk_specs import TINY_JOB, write_spec


@pytest.fixture
def tiny_spec(tmp_path) -> Path:
    doc = yaml.safe_load(yaml.safe_dump(TINY_JOB))
    doc["spec"]["output"] = {"dir": str(tmp_path / "out")}
    return write_spec(tmp_path / "tiny.yaml", doc)


@pytest.fixture
def graft_home(tmp_path, monkeypatch) -> Path:
    """Local job state, and the trainer's cache of builtin datasets, under tmp_path."""
    home = tmp_path / "graft-home"
    monkeypatch.setenv("GRAFT_HOME", str(home))
    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path / "cache"))
    return home
