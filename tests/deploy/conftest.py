"""The deploy layer's one fixture: the real API server's verdict on every object it emits."""

from __future__ import annotations

import pytest



@pytest.fixture(scope="session")
def server_errors(control_plane):
    """`server_errors(objects)`: one line per object the real API server refuses (server-side
    apply, dryRun=All, fieldValidation=Strict), against the real CRDs it serves."""
    return control_plane.dry_run_errors
