"""The deploy layer's one fixture: strict validators for every custom resource it emits."""

from __future__ import annotations

import pytest

from deploy_helpers import docs
from graft import manifests_gen
from graft.schema_check import CrdSchemas


@pytest.fixture(scope="session")
def crd_schemas(crds_dir) -> CrdSchemas:
    """The real upstream CRDs (../shared/crds) plus the ones Graft ships (generated)."""
    upstream = [doc for path in sorted(crds_dir.glob("*.yaml")) for doc in docs(path.read_text())
                if doc.get("kind") == "CustomResourceDefinition"]
    return CrdSchemas([*upstream, manifests_gen.finetunejob_crd(), *manifests_gen.kopf_peering_crds()])
