"""End to end without Docker: `kubectl apply` a FineTuneJob → Graft's operator (a real process
with the chart's RBAC) → PyTorchJob → the real Kubeflow training operator → Master and Worker
pods → the node stand-in (tests/node_standin.py: a test harness, not a kubelet) runs each as a
local process doing gloo DDP on the real sklearn digits → pods Succeeded → PyTorchJob Succeeded
(the training operator's call) → FineTuneJob Succeeded with the final metrics in its status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane.controllers import bound_claim, watch_until  # noqa: E402
from test_pytorchjob import JOB_NAME_LABEL, shared_job  # noqa: E402

pytestmark = [pytest.mark.controlplane, pytest.mark.distributed, pytest.mark.slow]

GRAFT = str(Path(sys.executable).parent / "graft")


def graft_cli(control_plane, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    return subprocess.run([GRAFT, *args], capture_output=True, text=True, env=env, timeout=timeout)


def finetunejob(control_plane, namespace: str, name: str) -> dict:
    return json.loads(control_plane.kubectl("get", "-n", namespace, f"finetunejob/{name}", "-o", "json").stdout)


@pytest.fixture
def core(control_plane):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(control_plane.kubeconfig)))


def test_kubectl_apply_finetunejob_trains_on_two_pods_to_succeeded(
        training_operator, graft_operator, node, control_plane, core, namespace, tmp_path):
    name = "digits"
    bound_claim(control_plane, namespace, "shared")
    document = shared_job(name)
    began = time.monotonic()
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(document))

    waited = graft_cli(control_plane, "wait", name, "-n", namespace, "--timeout", "240")
    wall_s = time.monotonic() - began
    job = finetunejob(control_plane, namespace, name)
    assert waited.returncode == 0, (waited.stdout, waited.stderr, job.get("status"))

    status = job["status"]
    assert status["phase"] == "Succeeded"
    assert status["child"] == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name}
    assert 0.0 <= status["progress"]["valAccuracy"] <= 1.0
    assert status["progress"]["summary"] == "1/1 epochs"
    assert status["bestMetric"]["name"] == "val_accuracy"
    assert status["lastCheckpoint"].startswith(f"/shared/{name}/checkpoints/")
    # The checkpoint and the exported model are real files on the claim both pods mounted.
    claim = node.workdir / "claims" / namespace / "shared"
    assert (claim / status["lastCheckpoint"].removeprefix("/shared/")).is_dir()
    assert any((claim / name).rglob("*.safetensors")), sorted(p.name for p in (claim / name).rglob("*"))

    child = json.loads(control_plane.kubectl("get", "-n", namespace, f"pytorchjob/{name}", "-o", "json").stdout)
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in child["status"]["conditions"])
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    assert sorted(p.status.phase for p in pods) == ["Succeeded", "Succeeded"]

    shown = graft_cli(control_plane, "get", name, "-n", namespace)
    assert shown.returncode == 0 and "Succeeded" in shown.stdout, shown
    print(f"\n2-worker FineTuneJob: apply -> Succeeded in {wall_s:.1f} s, "
          f"val accuracy {status['progress']['valAccuracy']:.3f}, checkpoint {status['lastCheckpoint']}")
