"""Fixtures for the Ray tests: a local Ray head shared by a module's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_backend():
    """The SDK's Ray backend on a local Ray head started in this test process (real Ray, with
    the dashboard the Job Submission API needs); shut down after the module."""
    ray = pytest.importorskip("ray")
    from graft.backends.ray import RayBackend

    backend = RayBackend()
    backend.client  # starts the head now, so the first test does not pay for it alone
    yield backend
    ray.shutdown()
