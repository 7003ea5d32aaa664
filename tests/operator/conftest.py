"""Fixtures for the operator tests, on the real control plane: Graft's chart installed by the
real helm (its ServiceAccount, ClusterRole and bindings), and the operator running as a real
process with a token of that ServiceAccount, so every call it makes is checked against the RBAC
the chart grants. Started once per session; tests use their own namespaces."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from operator_process import OperatorProcess  # noqa: E402

CHART = Path(__file__).resolve().parents[2] / "charts" / "graft"
RELEASE, RELEASE_NAMESPACE = "graft", "graft-system"
OPERATOR_ACCOUNT = f"{RELEASE}-operator"


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane, tmp_path_factory) -> Path:
    """`helm install` of the chart (the Deployment never runs: no kubelet), then a kubeconfig
    holding a real token of the operator's ServiceAccount."""
    control_plane.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                       "--set", "tests.enabled=false")
    return control_plane.service_account_kubeconfig(
        RELEASE_NAMESPACE, OPERATOR_ACCOUNT, tmp_path_factory.mktemp("operator-sa") / "kubeconfig")


@pytest.fixture(scope="session")
def kube_api(control_plane):
    """An admin client: the test's own hands (the user's kubectl, the training operator)."""
    from kubernetes import config

    return config.new_client_from_config(str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def operator(operator_kubeconfig, tmp_path_factory):
    """`python -m graft.operator --standalone` as the chart's ServiceAccount (log kept)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(operator_kubeconfig, log) as running:
        yield running
    print(log.read_text()[-5000:])
