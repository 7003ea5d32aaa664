"""Fixtures for renderer tests: the real API server's verdict on rendered objects, against the
real upstream CRDs it serves (tests/controlplane)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def server_errors(control_plane):
    """`server_errors(objects)`: one line per object the real API server refuses (server-side
    apply, dryRun=All, fieldValidation=Strict)."""
    return control_plane.dry_run_errors


@pytest.fixture(scope="session")
def assert_valid(server_errors):
    """Every object must be one the API server accepts as it stands."""

    def check(objects: list[dict]) -> None:
        problems = server_errors(objects)
        assert problems == [], "\n".join(problems)

    return check
