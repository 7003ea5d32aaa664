"""Fixtures for renderer tests: the three reference specs and strict checkers built from the
real upstream CRDs in ../shared/crds (skipped with the reason when that directory is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from graft.schema_check import CrdSchemas, manifest_errors


@pytest.fixture(scope="session")
def crd_schemas(crds_dir: Path) -> CrdSchemas:
    return CrdSchemas.from_dir(crds_dir)


@pytest.fixture(scope="session")
def assert_valid(crd_schemas: CrdSchemas):
    """Every object must pass its real CRD schema (custom kinds) or strict core schema."""

    def check(objects: list[dict]) -> None:
        problems = [line for obj in objects for line in manifest_errors(obj, crd_schemas)]
        assert problems == [], "\n".join(problems)

    return check
