"""A control plane of these tests' own (tests/controlplane: etcd, kube-apiserver, controller
manager, scheduler), because they break it on purpose: the API server is killed and restarted,
etcd is compacted, the operator is killed -9. The session's shared plane and its watchers never
see these faults. On it: Graft's chart (helm), the operator as the chart's ServiceAccount (a
process the tests may kill and restart) and a node stand-in that runs pods as processes."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def plane(tmp_path_factory, crds_dir):
    from controlplane.cluster import running_control_plane

    with running_control_plane(tmp_path_factory.mktemp("fault-plane"), crds_dir) as running:
        running.helm("install", "graft", str(REPO / "charts" / "graft"), "--namespace", "graft-system",
                     "--create-namespace", "--set", "tests.enabled=false")
        yield running


@pytest.fixture(scope="session")
def admin(plane):
    api = config.new_client_from_config(str(plane.kubeconfig))
    return SimpleNamespace(api=api, core=client.CoreV1Api(api), custom=client.CustomObjectsApi(api))


@pytest.fixture(scope="session")
def fault_node(plane, tmp_path_factory):
    from node_standin import NodeStandIn

    api = config.new_client_from_config(str(plane.kubeconfig))
    with NodeStandIn(api, tmp_path_factory.mktemp("fault-node"), plane.certs["serving.crt"],
                     plane.certs["serving.key"]) as running:
        yield running


@pytest.fixture(scope="session")
def fault_operator(plane, tmp_path_factory):
    """The operator as the chart's ServiceAccount; tests may kill() and restart() it."""
    from operator_process import OperatorProcess

    folder = tmp_path_factory.mktemp("fault-operator")
    kubeconfig = plane.service_account_kubeconfig("graft-system", "graft-operator", folder / "kubeconfig")
    with OperatorProcess(kubeconfig, folder / "operator.log") as running:
        yield running
    print(running.log_path.read_text()[-3000:])


@pytest.fixture
def ns(plane):
    name = f"f-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", name)
    yield name
    plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
