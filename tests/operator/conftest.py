"""Fixtures for the operator tests: the kmock API emulator (registered with the real FineTuneJob
CRD and the real upstream child CRDs) and the operator running as a real process against it,
started once for every module (tests use their own job names and compare metrics as deltas)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from kube_emulator import Emulator  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

from graft.crd import finetunejob_crd  # noqa: E402

CHILD_CRDS = ("kubeflow.org_pytorchjobs.yaml", "ray.io_rayjobs.yaml", "trainer.kubeflow.org_trainjobs.yaml")


@pytest.fixture(scope="session")
def emulator(crds_dir: Path):
    crds = [finetunejob_crd()] + [yaml.safe_load((crds_dir / f).read_text()) for f in CHILD_CRDS]
    with Emulator(crds) as running:
        yield running


@pytest.fixture(scope="session")
def kube_api(emulator, tmp_path_factory):
    """A kubernetes client configured for the emulator, as the operator's own is."""
    from kubernetes import config

    kubeconfig = emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    api = config.new_client_from_config(str(kubeconfig))
    api.kubeconfig_path = kubeconfig
    return api


@pytest.fixture(scope="session")
def operator(kube_api, tmp_path_factory):
    """`python -m graft.operator --standalone` watching the emulator (log kept for failures)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(kube_api.kubeconfig_path, log) as running:
        yield running
    print(log.read_text()[-5000:])
