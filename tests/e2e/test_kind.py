"""End to end on a real kind cluster (marker `kind`; skipped where no Docker engine answers):
what only a real kubelet and container runtime show.

`tests/e2e/setup-kind.sh` prepares the cluster first, exactly as .github/workflows/e2e-kind.yaml
does: kind with the Kubeflow training operator v1.9, Kubeflow Trainer v2.3 and KubeRay v1.7
from their pinned releases, Graft's CPU trainer and operator images loaded, Graft's chart
installed. The FineTuneJob → PyTorchJob tests (kubectl and SDK, and the kill -9 resume) are not
here: they are tests/controllers/test_finetunejob.py, which the workflow runs with this cluster as
its fixture. Here: the TrainJob and RayJob backends to Succeeded (the local suite stops where no
container runtime or Ray dashboard exists), and the exported model read back by the image in a
restricted pod. Each test fine-tunes a tiny model for real: timm/resnet10t with RANDOM INIT (no
pretrained weights are claimed) on the real scikit-learn digits shipped in the image, two
processes, one epoch, on CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

import graft
from graft.spec.contracts import read_progress, read_result

pytestmark = pytest.mark.kind

NAMESPACE = "graft-e2e"
CLAIM = "graft-e2e-output"
TRAINER_IMAGE = f"ghcr.io/graft-dev/graft-trainer:{graft.__version__}"
JOB_TIMEOUT_S = 1500


def tiny_job(name: str, backend: str) -> dict:
    return {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "task": "image-classification",
            "backend": backend,
            "backbone": {"name": "timm/resnet10t"},  # random init: no weights given
            "data": {"format": "imagefolder", "train": "builtin://sklearn-digits", "imageSize": 32, "limit": 480},
            "strategy": {"phases": [{"name": "full", "epochs": 1, "lr": 0.002, "unfreeze": "all"}]},
            "training": {"batchSize": 32},
            "resources": {"nodes": 2, "procsPerNode": 1, "cpu": "700m", "memory": "2Gi"},
            "output": {"dir": f"/output/{name}"},
            "kubernetes": {
                "image": TRAINER_IMAGE,
                # torchrun's elastic agent logs each node's global rank at INFO
                "env": [{"name": "LOGLEVEL", "value": "INFO"}],
                "volumes": [{"name": "output", "mountPath": "/output", "persistentVolumeClaim": CLAIM}],
                "ttlSecondsAfterFinished": 600,
            },
        },
    }


@pytest.fixture(scope="module")
def core():
    from kubernetes import client, config

    config.load_kube_config()
    api = client.CoreV1Api()
    # Pod Security "restricted" as warn/audit, not enforce: the upstream operators add pods of
    # their own that break it (training-operator's worker init container, KubeRay's default
    # submitter). Graft's own containers are held to it by tests/deploy.
    labels = {"pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "restricted"}
    api.create_namespace({"metadata": {"name": NAMESPACE, "labels": labels}})
    api.create_namespaced_persistent_volume_claim(NAMESPACE, {
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    yield api
    if not _kubectl("get", "pods", "-n", NAMESPACE).returncode:
        print(_kubectl("get", "all,events", "-n", NAMESPACE).stdout)
    api.delete_namespace(NAMESPACE)


@pytest.fixture(scope="module")
def sdk(core):
    return graft.Client(backend="kubernetes", namespace=NAMESPACE)


def _kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("kubectl") or "kubectl", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def _exported_model(core, name: str) -> dict:
    """Read the model the job exported from the shared volume, in a restricted pod."""
    script = (
        "import json, sys, pathlib\n"
        "from safetensors import safe_open\n"
        "model = pathlib.Path(sys.argv[1])\n"
        "info = json.loads((model / 'graft.json').read_text())\n"
        "with safe_open(str(model / 'model.safetensors'), 'pt') as f:\n"
        "    keys = list(f.keys())\n"
        "print(json.dumps({'classes': info['classes'], 'tensors': len(keys),\n"
        "                  'head': sum(k.startswith('head.') for k in keys)}))\n"
    )
    security = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                "runAsUser": 1000, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    pod_name = f"{name}-read-model"
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": pod_name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "read", "image": TRAINER_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", script, f"/output/{name}/model"],
                "securityContext": security,
                "volumeMounts": [{"name": "output", "mountPath": "/output", "readOnly": True},
                                 {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "output", "persistentVolumeClaim": {"claimName": CLAIM, "readOnly": True}},
                        {"name": "tmp", "emptyDir": {}}],
        },
    })
    deadline = time.monotonic() + 300
    while (phase := core.read_namespaced_pod(pod_name, NAMESPACE).status.phase) not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, f"{pod_name} still {phase}"
        time.sleep(3)
    log = core.read_namespaced_pod_log(pod_name, NAMESPACE)
    assert phase == "Succeeded", log
    return json.loads(log.strip().splitlines()[-1])


def _assert_model(core, name: str) -> None:
    model = _exported_model(core, name)
    assert model["classes"] == [str(d) for d in range(10)]
    assert model["tensors"] > 10 and model["head"] >= 2


def _assert_both_ranks_ran(core, name: str, backend: str, logs: list[str]) -> None:
    text = "\n".join(logs)[-4000:]
    if backend == "rayjob":
        # the driver prints Ray Train's result; the two Train workers ran on the two worker pods
        result = next(filter(None, map(read_result, logs)))
        assert result.summary.epochs_run == 1, text
        selector = f"graft.dev/job={name},ray.io/node-type=worker"
        assert len(core.list_namespaced_pod(NAMESPACE, label_selector=selector).items) == 2
        return
    # rank 0 reports every epoch; each torchrun node's elastic agent logs its global rank
    progress = [p for p in map(read_progress, logs) if p is not None]
    assert progress and progress[-1].epoch == progress[-1].epochs == 1, text
    pods = {line.split("]", 1)[0] for line in logs}
    assert len(pods) == 2, text
    for rank in (0, 1):
        assert f"global_ranks=[{rank}]" in "\n".join(logs), text


@pytest.mark.parametrize("backend", ["trainjob", "rayjob"])
def test_sdk_runs_a_tiny_cpu_finetune(sdk, core, backend):
    name = f"e2e-{backend}"
    ref = sdk.submit(tiny_job(name, backend))
    assert ref.namespace == NAMESPACE
    status = sdk.wait(name, timeout=JOB_TIMEOUT_S)
    events = "\n".join(sdk.events(name))
    assert status.phase == "Succeeded", f"{status.message}\n{sdk.why(name)}\n{events}"
    _assert_both_ranks_ran(core, name, backend, list(sdk.logs(name)))
    _assert_model(core, name)
