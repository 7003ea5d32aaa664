"""End to end: a FineTuneJob, submitted with `kubectl apply` or through the SDK
(`graft.Client("kubernetes").submit`) → Graft's operator → PyTorchJob → the real Kubeflow
training operator → Master and Worker pods doing gloo DDP on the real sklearn digits → pods
Succeeded → PyTorchJob Succeeded (the training operator's call) → FineTuneJob Succeeded with the
final metrics in its status. And the same job with the Worker's training process killed -9
mid-epoch: back through the rendered restart policy, resumed from the shared checkpoint, to the
same weights and metrics as the uninterrupted run.

The same tests run on two clusters (the `cluster` fixture, e2e_clusters.py): here, on the local
control plane whose pods the node stand-in (tests/node_standin.py: a test harness, not a
kubelet) runs as local processes; and in .github/workflows/e2e-kind.yaml (marker kind) on a kind
cluster, where a real kubelet runs the trainer image. The model is tests/sdk's tiny randomly
initialised timm test model: real processes and real DDP, no pretrained weights claimed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))

from e2e_clusters import TRAINER_CONTAINER  # noqa: E402
from fault_jobs import assert_same_weights, final_weights, history  # noqa: E402
from test_pytorchjob import JOB_NAME_LABEL, shared_job  # noqa: E402
from tools import wait_for  # noqa: E402

pytestmark = [pytest.mark.controlplane, pytest.mark.distributed, pytest.mark.slow]

GRAFT = str(Path(sys.executable).parent / "graft")
TIMEOUT_S = 240
STEPS_PER_EPOCH = 8  # e2e_job: 64 samples, 2 ranks, batch 4
CLAIM = "shared"


def graft_cli(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([GRAFT, *args], capture_output=True, text=True, env=env, timeout=timeout)


def finetunejob(cluster, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "-n", namespace, f"finetunejob/{name}", "-o", "json").stdout)


def sdk(cluster, namespace: str):
    import graft

    return graft.Client("kubernetes", kubeconfig=str(cluster.kubeconfig), namespace=namespace)


def e2e_job(name: str) -> dict:
    """shared_job with real steps to interrupt: batch 4 (8 steps per rank and epoch), 2 epochs,
    the backbone run every step (no feature cache) and a checkpoint every 2 steps, so a
    mid-epoch checkpoint exists well before the end."""
    document = shared_job(name)
    spec = document["spec"]
    spec["strategy"] = {"phases": [{"name": "head", "epochs": 2, "lr": 0.01}], "cacheFeatures": "never"}
    spec["training"]["batchSize"] = 4
    spec["checkpoint"] = {"everySteps": 2}
    return document


def submit(how: str, cluster, namespace: str, document: dict) -> None:
    """What a user does on that path; either way a FineTuneJob is created and only the operator
    creates its child."""
    if how == "kubectl":
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(document))
    else:
        sdk(cluster, namespace).submit(document)


def wait_until_finished(how: str, cluster, namespace: str, name: str) -> dict:
    """`graft wait` or `Client.wait`, as the user submitted; the FineTuneJob as it ended."""
    if how == "kubectl":
        waited = graft_cli(cluster, "wait", name, "-n", namespace, "--timeout", str(TIMEOUT_S))
        assert waited.returncode == 0, (waited.stdout, waited.stderr, finetunejob(cluster, namespace, name))
    else:
        status = sdk(cluster, namespace).wait(name, timeout=TIMEOUT_S)
        assert status.phase == "Succeeded", (status, finetunejob(cluster, namespace, name))
    return finetunejob(cluster, namespace, name)


@dataclass
class Finished:
    """A job run to Succeeded: its FineTuneJob status, namespace, output folder (read when it
    ended: the namespace and its claim go with the test that ran it) and wall time."""

    status: dict
    namespace: str
    output: Path
    wall_s: float


@pytest.fixture(scope="module")
def finished() -> dict[tuple[str, str], Finished]:
    """The uninterrupted runs of this module by cluster and how they were submitted, so the kill
    test compares with one of them instead of training the same spec again."""
    return {}


def train(how: str, finished: dict, cluster, namespace: str, name: str = "digits") -> Finished:
    """e2e_job submitted `how`, waited for to the end (once per module, cluster and path)."""
    if (cluster.name, how) not in finished:
        cluster.claim(namespace, CLAIM)
        began = time.monotonic()
        submit(how, cluster, namespace, e2e_job(name))
        job = wait_until_finished(how, cluster, namespace, name)
        wall_s = time.monotonic() - began
        finished[cluster.name, how] = Finished(job["status"], namespace, cluster.files(namespace, CLAIM, name), wall_s)
    return finished[cluster.name, how]


@pytest.fixture
def core(cluster):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


def job_pods(core, namespace: str, name: str) -> dict[str, object]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    return {p.metadata.name: p for p in pods}


@pytest.mark.parametrize("how", ["kubectl", "sdk"])
def test_a_finetunejob_submitted_by_kubectl_or_the_sdk_trains_on_two_pods_to_succeeded(
        how, finished, cluster, core, cluster_namespace):
    name = "digits"
    run = train(how, finished, cluster, cluster_namespace, name)
    namespace = run.namespace

    status = run.status
    assert status["phase"] == "Succeeded"
    assert status["child"] == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name}
    assert 0.0 <= status["progress"]["valAccuracy"] <= 1.0
    assert status["progress"]["summary"] == "2/2 epochs"
    assert status["bestMetric"]["name"] == "val_accuracy"
    assert status["restarts"] == 0
    assert status["lastCheckpoint"].startswith(f"/{CLAIM}/{name}/checkpoints/")
    # The checkpoint and the exported model are real files on the claim both pods mounted.
    output = run.output
    assert (output.parent / status["lastCheckpoint"].removeprefix(f"/{CLAIM}/")).is_dir()
    assert any(output.rglob("*.safetensors")), sorted(p.name for p in output.rglob("*"))

    child = json.loads(cluster.kubectl("get", "-n", namespace, f"pytorchjob/{name}", "-o", "json").stdout)
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in child["status"]["conditions"])
    # The operator made the child, whichever way the FineTuneJob came in.
    assert [o["kind"] for o in child["metadata"]["ownerReferences"]] == ["FineTuneJob"]
    assert sorted(p.status.phase for p in job_pods(core, namespace, name).values()) == ["Succeeded", "Succeeded"]

    if how == "kubectl":
        shown = graft_cli(cluster, "get", name, "-n", namespace)
        assert shown.returncode == 0 and "Succeeded" in shown.stdout, shown
    else:
        shown = sdk(cluster, namespace).get(name)
        assert shown.phase == "Succeeded"
        assert shown.metrics["val_accuracy"] == status["progress"]["valAccuracy"]
    print(f"\n2-worker FineTuneJob ({how}, {cluster.name}): submit -> Succeeded in {run.wall_s:.1f} s, "
          f"val accuracy {status['progress']['valAccuracy']:.3f}, checkpoint {status['lastCheckpoint']}")


def steps_published(cluster, namespace: str, name: str) -> list[int]:
    return sorted(int(n.removeprefix("step-")) for n in cluster.names(namespace, CLAIM, f"{name}/checkpoints")
                  if n.startswith("step-"))


def first_epoch_or_end(cluster, namespace: str, name: str) -> dict | None:
    """The FineTuneJob's status once it shows epoch 1's progress or has ended, else None."""
    status = finetunejob(cluster, namespace, name).get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed") or (status.get("progress") or {}).get("epoch") == 1:
        return status
    return None


def test_a_workers_training_process_killed_mid_epoch_restarts_in_its_pod_and_resumes_to_the_same_result(
        finished, cluster, core, cluster_namespace):
    """OnFailure (the rendered restartPolicy): the node restarts the containers in place, the
    training operator recreates nothing, the job resumes from the newest checkpoint on the claim
    and ends where the uninterrupted run did."""
    reference = train("sdk", finished, cluster, cluster_namespace)
    namespace, name = cluster_namespace, "killed"
    cluster.claim(namespace, CLAIM)
    began = time.monotonic()
    submit("sdk", cluster, namespace, e2e_job(name))

    wait_for(lambda: any(step % STEPS_PER_EPOCH for step in steps_published(cluster, namespace, name)),
             timeout=TIMEOUT_S, interval=0.02, explain=lambda: steps_published(cluster, namespace, name))
    pods_before = {n: p.metadata.uid for n, p in job_pods(core, namespace, name).items()}
    cluster.kill_training_process(namespace, f"{name}-worker-0")
    published = steps_published(cluster, namespace, name)
    assert "report.json" not in cluster.names(namespace, CLAIM, name), "the job finished before the kill"
    assert published[-1] < STEPS_PER_EPOCH, f"killed after the first epoch: {published}"

    # The first epoch ends in the restarted containers, and the status shows it while the job
    # still runs: the operator follows the log of a container restarted in place too.
    shown = wait_for(lambda: first_epoch_or_end(cluster, namespace, name), timeout=TIMEOUT_S,
                     interval=0.2, explain=lambda: finetunejob(cluster, namespace, name).get("status"))
    assert shown["phase"] == "Running" and shown["progress"]["summary"] == "1/2 epochs", shown

    status = wait_until_finished("sdk", cluster, namespace, name)["status"]
    wall_s = time.monotonic() - began
    assert status["phase"] == "Succeeded"
    # Restarted in place: the same two pods, each container once (the Worker killed, the Master
    # failing when its peer died), as the FineTuneJob's status counts them.
    pods = job_pods(core, namespace, name)
    assert {n: p.metadata.uid for n, p in pods.items()} == pods_before
    assert {n: p.status.container_statuses[0].restart_count for n, p in pods.items()} == {n: 1 for n in pods}
    assert status["restarts"] == 2
    # Resumed from the newest checkpoint published before the kill, not from the start.
    master_log = core.read_namespaced_pod_log(f"{name}-master-0", namespace, container=TRAINER_CONTAINER)
    resumed = int(master_log.split(f"resuming from /{CLAIM}/{name}/checkpoints/step-")[1].split()[0])
    assert resumed >= published[-1], (resumed, published)
    # Bit for bit the uninterrupted run's weights and metrics.
    output = cluster.files(namespace, CLAIM, name)
    assert_same_weights(final_weights(reference.output / "checkpoints"), final_weights(output / "checkpoints"))
    assert history(output) == history(reference.output)
    assert status["progress"]["valAccuracy"] == reference.status["progress"]["valAccuracy"]
    print(f"\nkill -9 of the Worker's rank with step-{published[-1]} the newest checkpoint ({cluster.name}): "
          f"restarts {status['restarts']}, resumed from step-{resumed}, Succeeded in {wall_s:.1f} s "
          f"(uninterrupted {reference.wall_s:.1f} s), val accuracy {status['progress']['valAccuracy']:.3f} "
          f"= uninterrupted {reference.status['progress']['valAccuracy']:.3f}")
