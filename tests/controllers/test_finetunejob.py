"""End to end without Docker: a FineTuneJob, submitted with `kubectl apply` or through the SDK
(`graft.Client("kubernetes").submit`) → Graft's operator (a real process with the chart's RBAC)
→ PyTorchJob → the real Kubeflow training operator → Master and Worker pods → the node stand-in
(tests/node_standin.py: a test harness, not a kubelet) runs each as a local process doing gloo
DDP on the real sklearn digits → pods Succeeded → PyTorchJob Succeeded (the training operator's
call) → FineTuneJob Succeeded with the final metrics in its status. And the same job with the
Worker's training process killed -9 mid-epoch: back through the rendered restart policy, resumed
from the shared checkpoint, to the same weights and metrics as the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))

from controlplane.controllers import bound_claim  # noqa: E402
from fault_jobs import assert_same_weights, final_weights, history  # noqa: E402
from test_pytorchjob import JOB_NAME_LABEL, shared_job  # noqa: E402
from tools import wait_for  # noqa: E402

pytestmark = [pytest.mark.controlplane, pytest.mark.distributed, pytest.mark.slow]

GRAFT = str(Path(sys.executable).parent / "graft")
TIMEOUT_S = 240
STEPS_PER_EPOCH = 8  # e2e_job: 64 samples, 2 ranks, batch 4


def graft_cli(control_plane, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    return subprocess.run([GRAFT, *args], capture_output=True, text=True, env=env, timeout=timeout)


def finetunejob(control_plane, namespace: str, name: str) -> dict:
    return json.loads(control_plane.kubectl("get", "-n", namespace, f"finetunejob/{name}", "-o", "json").stdout)


def sdk(control_plane, namespace: str):
    import graft

    return graft.Client("kubernetes", kubeconfig=str(control_plane.kubeconfig), namespace=namespace)


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


def submit(how: str, control_plane, namespace: str, document: dict) -> None:
    """What a user does on that path; either way a FineTuneJob is created and only the operator
    creates its child."""
    if how == "kubectl":
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(document))
    else:
        sdk(control_plane, namespace).submit(document)


def wait_until_finished(how: str, control_plane, namespace: str, name: str) -> dict:
    """`graft wait` or `Client.wait`, as the user submitted; the FineTuneJob as it ended."""
    if how == "kubectl":
        waited = graft_cli(control_plane, "wait", name, "-n", namespace, "--timeout", str(TIMEOUT_S))
        assert waited.returncode == 0, (waited.stdout, waited.stderr, finetunejob(control_plane, namespace, name))
    else:
        status = sdk(control_plane, namespace).wait(name, timeout=TIMEOUT_S)
        assert status.phase == "Succeeded", (status, finetunejob(control_plane, namespace, name))
    return finetunejob(control_plane, namespace, name)


@dataclass
class Finished:
    """A job run to Succeeded: its FineTuneJob status, output folder on the claim, wall time."""

    status: dict
    output: Path
    wall_s: float


@pytest.fixture(scope="module")
def finished() -> dict[str, Finished]:
    """The uninterrupted runs of this module by how they were submitted, so the kill test
    compares with one of them instead of training the same spec again."""
    return {}


def train(how: str, finished: dict, control_plane, node, namespace: str, name: str = "digits") -> Finished:
    """e2e_job submitted `how`, waited for to the end (once per module and path)."""
    if how not in finished:
        bound_claim(control_plane, namespace, "shared")
        began = time.monotonic()
        submit(how, control_plane, namespace, e2e_job(name))
        job = wait_until_finished(how, control_plane, namespace, name)
        output = node.workdir / "claims" / namespace / "shared" / name
        finished[how] = Finished(job["status"], output, time.monotonic() - began)
    return finished[how]


@pytest.fixture
def core(control_plane):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(control_plane.kubeconfig)))


def job_pods(core, namespace: str, name: str) -> dict[str, object]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    return {p.metadata.name: p for p in pods}


@pytest.mark.parametrize("how", ["kubectl", "sdk"])
def test_a_finetunejob_submitted_by_kubectl_or_the_sdk_trains_on_two_pods_to_succeeded(
        how, finished, training_operator, graft_operator, node, control_plane, core, namespace):
    name = "digits"
    run = train(how, finished, control_plane, node, namespace, name)

    status = run.status
    assert status["phase"] == "Succeeded"
    assert status["child"] == {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name}
    assert 0.0 <= status["progress"]["valAccuracy"] <= 1.0
    assert status["progress"]["summary"] == "2/2 epochs"
    assert status["bestMetric"]["name"] == "val_accuracy"
    assert status["restarts"] == 0
    assert status["lastCheckpoint"].startswith(f"/shared/{name}/checkpoints/")
    # The checkpoint and the exported model are real files on the claim both pods mounted.
    assert (run.output.parent / status["lastCheckpoint"].removeprefix("/shared/")).is_dir()
    assert any(run.output.rglob("*.safetensors")), sorted(p.name for p in run.output.rglob("*"))

    child = json.loads(control_plane.kubectl("get", "-n", namespace, f"pytorchjob/{name}", "-o", "json").stdout)
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in child["status"]["conditions"])
    # The operator made the child, whichever way the FineTuneJob came in.
    assert [o["kind"] for o in child["metadata"]["ownerReferences"]] == ["FineTuneJob"]
    assert sorted(p.status.phase for p in job_pods(core, namespace, name).values()) == ["Succeeded", "Succeeded"]

    if how == "kubectl":
        shown = graft_cli(control_plane, "get", name, "-n", namespace)
        assert shown.returncode == 0 and "Succeeded" in shown.stdout, shown
    else:
        shown = sdk(control_plane, namespace).get(name)
        assert shown.phase == "Succeeded"
        assert shown.metrics["val_accuracy"] == status["progress"]["valAccuracy"]
    print(f"\n2-worker FineTuneJob ({how}): submit -> Succeeded in {run.wall_s:.1f} s, "
          f"val accuracy {status['progress']['valAccuracy']:.3f}, checkpoint {status['lastCheckpoint']}")


def steps_published(checkpoints: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step-")) for p in checkpoints.glob("step-*"))


def kill_training_process(node, namespace: str, pod: str) -> None:
    """kill -9 the rank process under the pod's container. The container's own process is
    torchrun (the stand-in's chroot execs into it); the rank is its graft_trainer child."""
    import psutil

    agent = psutil.Process(node.containers[(namespace, pod, "pytorch")].proc.pid)
    rank = wait_for(lambda: [c for c in agent.children() if "graft_trainer" in c.cmdline()],
                    timeout=TIMEOUT_S, explain=lambda: [c.cmdline() for c in agent.children()])
    assert len(rank) == 1, [c.cmdline() for c in rank]
    os.kill(rank[0].pid, signal.SIGKILL)


def first_epoch_or_end(control_plane, namespace: str, name: str) -> dict | None:
    """The FineTuneJob's status once it shows epoch 1's progress or has ended, else None."""
    status = finetunejob(control_plane, namespace, name).get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed") or (status.get("progress") or {}).get("epoch") == 1:
        return status
    return None


def test_a_workers_training_process_killed_mid_epoch_restarts_in_its_pod_and_resumes_to_the_same_result(
        finished, training_operator, graft_operator, node, control_plane, core, namespace):
    """OnFailure (the rendered restartPolicy): the node restarts the containers in place, the
    training operator recreates nothing, the job resumes from the newest checkpoint on the claim
    and ends where the uninterrupted run did."""
    reference = train("sdk", finished, control_plane, node, namespace)
    name = "killed"
    checkpoints = node.workdir / "claims" / namespace / "shared" / name / "checkpoints"
    bound_claim(control_plane, namespace, "shared")
    began = time.monotonic()
    submit("sdk", control_plane, namespace, e2e_job(name))

    wait_for(lambda: any(step % STEPS_PER_EPOCH for step in steps_published(checkpoints)), timeout=TIMEOUT_S,
             interval=0.02, explain=lambda: steps_published(checkpoints))
    pods_before = {n: p.metadata.uid for n, p in job_pods(core, namespace, name).items()}
    kill_training_process(node, namespace, f"{name}-worker-0")
    published = steps_published(checkpoints)
    assert not (checkpoints.parent / "report.json").exists(), "the job finished before the kill"
    assert published[-1] < STEPS_PER_EPOCH, f"killed after the first epoch: {published}"

    # The first epoch ends in the restarted containers, and the status shows it while the job
    # still runs: the operator follows the log of a container restarted in place too.
    shown = wait_for(lambda: first_epoch_or_end(control_plane, namespace, name), timeout=TIMEOUT_S,
                     interval=0.2, explain=lambda: finetunejob(control_plane, namespace, name).get("status"))
    assert shown["phase"] == "Running" and shown["progress"]["summary"] == "1/2 epochs", shown

    status = wait_until_finished("sdk", control_plane, namespace, name)["status"]
    wall_s = time.monotonic() - began
    assert status["phase"] == "Succeeded"
    # Restarted in place: the same two pods, each container once (the Worker killed, the Master
    # failing when its peer died), as the FineTuneJob's status counts them.
    pods = job_pods(core, namespace, name)
    assert {n: p.metadata.uid for n, p in pods.items()} == pods_before
    assert {n: p.status.container_statuses[0].restart_count for n, p in pods.items()} == {n: 1 for n in pods}
    assert status["restarts"] == 2
    # Resumed from the newest checkpoint published before the kill, not from the start.
    master_log = (node.workdir / "pods" / namespace / f"{name}-master-0" / "pytorch.log").read_text()
    resumed = int(master_log.split(f"resuming from /shared/{name}/checkpoints/step-")[1].split()[0])
    assert resumed >= published[-1], (resumed, published)
    # Bit for bit the uninterrupted run's weights and metrics.
    assert_same_weights(final_weights(reference.output / "checkpoints"), final_weights(checkpoints))
    assert history(checkpoints.parent) == history(reference.output)
    assert status["progress"]["valAccuracy"] == reference.status["progress"]["valAccuracy"]
    print(f"\nkill -9 of the Worker's rank with step-{published[-1]} the newest checkpoint: "
          f"restarts {status['restarts']}, resumed from step-{resumed}, Succeeded in {wall_s:.1f} s "
          f"(uninterrupted {reference.wall_s:.1f} s), val accuracy {status['progress']['valAccuracy']:.3f} "
          f"= uninterrupted {reference.status['progress']['valAccuracy']:.3f}")
