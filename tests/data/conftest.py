"""Fixtures for the data tests (generated shards, see shardgen.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from shardgen import write_text_shards


@pytest.fixture
def text_shards(tmp_path) -> Path:
    """7 uneven shards, 101 samples: ranks, workers and batches never divide evenly."""
    return write_text_shards(tmp_path / "text", [20, 3, 17, 1, 30, 12, 18])
