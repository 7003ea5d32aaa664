"""Fixtures for the controller layer: the real upstream controllers (tests/controlplane/
controllers.py) against the session control plane, the node stand-in running their pods as
local processes, and Graft's operator from tests/operator. Each controller runs for this
package only (scope "package"), so the SDK and operator tests after it never meet a controller
acting on the objects they write by hand. A failed test prints each controller's log tail."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from operator_process import OperatorProcess  # noqa: E402

CHART = Path(__file__).resolve().parents[2] / "charts" / "graft"
# A release of its own (tests/operator installs "graft" later in the same session): the chart's
# ServiceAccount, RBAC and ClusterTrainingRuntime, uninstalled when this package is done.
RELEASE, RELEASE_NAMESPACE = "graft-ctl", "graft-ctl-system"

_RUNNING: list = []


def _start(control_plane, tmp_path_factory, name: str):
    from controlplane.controllers import Controllers

    with Controllers(control_plane, [name], tmp_path_factory.mktemp(name)) as running:
        _RUNNING.append(running)
        print(f"\n{name}: built/found in {running.build_s:.1f} s")
        yield running[name]
        _RUNNING.remove(running)


@pytest.fixture(scope="package")
def training_operator(control_plane, tmp_path_factory):
    """The Kubeflow training operator (PyTorchJob scheme, validating webhook on loopback)."""
    yield from _start(control_plane, tmp_path_factory, "training-operator")


@pytest.fixture(scope="package")
def kuberay(control_plane, tmp_path_factory):
    """The KubeRay operator (RayCluster, RayJob, RayService controllers; webhooks off)."""
    yield from _start(control_plane, tmp_path_factory, "kuberay")


@pytest.fixture(scope="package")
def trainer(control_plane, tmp_path_factory):
    """The Kubeflow Trainer v2 controller manager and the JobSet controller (their defaulting
    and validating webhooks served on loopback)."""
    yield from _start(control_plane, tmp_path_factory, "trainer")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _RUNNING:
        tails = "\n".join(running.tails() for running in _RUNNING)
        report.sections.append(("controller logs (tail)", tails))
    cluster = item.funcargs.get("cluster")
    node = (item.funcargs.get("node") or getattr(cluster, "node", None)) if report.failed else None
    if node is not None:  # what the pods the stand-in ran printed last
        logs = sorted(node.workdir.glob("pods/*/*/*.log"))
        report.sections.append(("pod logs (tail)", "\n".join(
            f"----- {log.relative_to(node.workdir)} -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            for log in logs[-8:])))


@pytest.fixture(scope="package")
def graft_operator(control_plane, tmp_path_factory):
    """Graft's chart installed by the real helm, and `python -m graft.operator --standalone`
    running with a real token of the chart's ServiceAccount (its RBAC is what it may do)."""
    runtime = control_plane.kubectl("get", "clustertrainingruntime", "graft-torch-distributed", check=False)
    control_plane.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                       "--set", "tests.enabled=false",
                       "--set", f"trainingRuntime.enabled={'false' if runtime.returncode == 0 else 'true'}")
    folder = tmp_path_factory.mktemp("graft-operator")
    kubeconfig = control_plane.service_account_kubeconfig(RELEASE_NAMESPACE, f"{RELEASE}-operator",
                                                          folder / "kubeconfig")
    try:
        with OperatorProcess(kubeconfig, folder / "operator.log") as running:
            yield running
    finally:
        control_plane.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", check=False)


@pytest.fixture(scope="module", params=["local", pytest.param("kind", marks=pytest.mark.kind)])
def cluster(request):
    """Where test_finetunejob.py runs: the local control plane with the real training operator,
    Graft's operator and the node stand-in, or (marker kind, in .github/workflows/e2e-kind.yaml)
    a kind cluster that tests/e2e/setup-kind.sh prepared. Same tests, different fixture."""
    from e2e_clusters import KindCluster, LocalCluster

    if request.param == "kind":
        from graft.spec.models import Kubernetes

        return KindCluster(Kubernetes().image)
    request.getfixturevalue("training_operator")
    request.getfixturevalue("graft_operator")
    return LocalCluster(request.getfixturevalue("control_plane"), request.getfixturevalue("node"))


@pytest.fixture
def cluster_namespace(cluster) -> str:
    """A fresh namespace per test on `cluster`, deleted after."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
