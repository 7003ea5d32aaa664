"""Fixtures shared by every test layer: where the real CRDs live, repo paths, the real control
plane (tests/controlplane) for the Kubernetes layers, and the skips for layers that need what
this machine may lack (kind/Docker, a GPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CRDS = Path(os.environ.get("GRAFT_CRDS_DIR", REPO.parent / "shared" / "crds"))


def _docker_works() -> str | None:
    """None when a Docker engine answers, else the reason kind tests cannot run."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if result.returncode != 0:
        return "no Docker engine answers `docker info` (kind needs one; the GitHub workflow has it)"
    if shutil.which("kind") is None:
        return "the kind binary is not on PATH"
    return None


def _cuda_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "no CUDA device on this machine"


def pytest_collection_modifyitems(config, items):
    kind_reason = gpu_reason = None
    for item in items:
        if "kind" in item.keywords:
            kind_reason = kind_reason or _docker_works() or ""
            if kind_reason:
                item.add_marker(pytest.mark.skip(reason=f"kind layer skipped: {kind_reason}"))
        if "gpu" in item.keywords:
            gpu_reason = gpu_reason or _cuda_missing() or ""
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=f"gpu test skipped: {gpu_reason}"))


@pytest.fixture(scope="session", autouse=True)
def graft_cache(tmp_path_factory) -> Path:
    """Builtin datasets materialised once per session in a temporary GRAFT_CACHE (unless one is
    set); HF_HUB_OFFLINE so nothing is ever fetched from the Hub."""
    cache = os.environ.get("GRAFT_CACHE") or str(tmp_path_factory.mktemp("graft-cache"))
    os.environ["GRAFT_CACHE"] = cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    return Path(cache)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def crds_dir() -> Path:
    """The real upstream CRDs, read from ../shared/crds (never copied into the project)."""
    if not SHARED_CRDS.is_dir():
        pytest.skip(f"real CRDs not found at {SHARED_CRDS} (../shared is absent); schema checks need them")
    return SHARED_CRDS


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory, crds_dir):
    """The session's control plane, shared by every test that talks to Kubernetes."""
    from controlplane.cluster import running_control_plane

    with running_control_plane(tmp_path_factory.mktemp("controlplane"), crds_dir) as plane:
        yield plane


@pytest.fixture
def namespace(control_plane) -> str:
    """A fresh namespace per test, so jobs of one test never meet another's; deleted after
    (the real namespace controller removes what is left in it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def node(control_plane, tmp_path_factory):
    """The node stand-in (tests/node_standin.py, a test harness, not a kubelet): one Node the
    real scheduler binds pods to, whose containers it runs as local processes."""
    from kubernetes import config

    from node_standin import NodeStandIn

    api = config.new_client_from_config(str(control_plane.kubeconfig))
    with NodeStandIn(api, tmp_path_factory.mktemp("node"), control_plane.certs["serving.crt"],
                     control_plane.certs["serving.key"]) as running:
        yield running


# Graft's operator for every layer that needs one (tests/operator, tests/sdk): the chart
# installed by the real helm, the operator as a real process with that ServiceAccount's token.
CHART = REPO / "charts" / "graft"
# Not graft-system: the deploy tests dry-run the kustomize builds into that namespace on the same
# server, and their Deployment's selector must not meet this release's (immutable) one there.
RELEASE, RELEASE_NAMESPACE = "graft", "graft-under-test"
OPERATOR_ACCOUNT = f"{RELEASE}-operator"


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane, tmp_path_factory) -> Path:
    """`helm install` of the chart (the Deployment never runs: no kubelet), then a kubeconfig
    holding a real token of the operator's ServiceAccount."""
    # No ClusterTrainingRuntime: a cluster-scoped singleton another release of the chart in the
    # same session (tests/controllers) may own, and nothing here runs a TrainJob.
    control_plane.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                       "--set", "tests.enabled=false", "--set", "trainingRuntime.enabled=false")
    return control_plane.service_account_kubeconfig(
        RELEASE_NAMESPACE, OPERATOR_ACCOUNT, tmp_path_factory.mktemp("operator-sa") / "kubeconfig")


@pytest.fixture(scope="session")
def operator_user() -> str:
    """The operator's identity as the API server names it (audit log, `kubectl --as`)."""
    return f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_ACCOUNT}"


@pytest.fixture(scope="session")
def kube_api(control_plane):
    """An admin client: the test's own hands (the user's kubectl, the training operator)."""
    from kubernetes import config

    return config.new_client_from_config(str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def operator(operator_kubeconfig, tmp_path_factory):
    """`python -m graft.operator --standalone` as the chart's ServiceAccount (log kept)."""
    from operator_process import OperatorProcess

    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(operator_kubeconfig, log) as running:
        yield running
    print(log.read_text()[-5000:])
