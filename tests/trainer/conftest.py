"""Trainer tests: the builtin datasets are materialised once per session in a temporary
GRAFT_CACHE (unless one is set), and nothing is fetched from the Hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def graft_cache(tmp_path_factory) -> Path:
    cache = os.environ.get("GRAFT_CACHE") or str(tmp_path_factory.mktemp("graft-cache"))
    os.environ["GRAFT_CACHE"] = cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    return Path(cache)


