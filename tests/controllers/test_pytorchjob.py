"""`graft render --target pytorchjob` proven by the real Kubeflow training operator: what it
makes of the rendered PyTorchJob (Master/Worker pods, their Services, the torchrun env it
injects) is read back from the API server, and the pods it made train for real through the node
stand-in (tests/node_standin.py, a test harness, not a kubelet) until the operator itself marks
the PyTorchJob Succeeded."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from controlplane.controllers import bound_claim, watch_until  # noqa: E402
from sdk_specs import TINY_JOB, write_spec  # noqa: E402

pytestmark = pytest.mark.controlplane

REPLICA_LABEL = "training.kubeflow.org/replica-type"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"


def env_of(pod: dict) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in pod["spec"]["containers"][0].get("env", [])}


def shared_job(name: str, claim: str = "shared") -> dict:
    """TINY_JOB with its output (and so its checkpoints) on one claim every pod mounts: the
    trainer refuses a 2-node job whose checkpoint dir the nodes do not share."""
    document = copy.deepcopy(TINY_JOB)
    document["metadata"]["name"] = name
    document["spec"]["output"] = {"dir": f"/shared/{name}"}
    document["spec"]["kubernetes"] = {
        "volumes": [{"name": "shared", "mountPath": "/shared", "persistentVolumeClaim": claim}]}
    return document


def render(tmp_path: Path, document: dict, target: str) -> str:
    spec = write_spec(tmp_path / "job.yaml", document)
    result = subprocess.run([str(Path(sys.executable).parent / "graft"), "render", str(spec), "--target", target],
                            capture_output=True, text=True, check=True)
    return result.stdout


def job_pods(core, namespace: str, name: str, count: int, timeout: float = 120) -> list[dict]:
    """The pods the controller made for job `name`, once there are `count` of them."""
    return watch_until(core.list_namespaced_pod, lambda pods: len(pods) == count and pods, timeout,
                       namespace=namespace, label_selector=f"{JOB_NAME_LABEL}={name}")


@pytest.fixture
def core(control_plane):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(control_plane.kubeconfig)))


@pytest.mark.distributed
@pytest.mark.slow
def test_rendered_pytorchjob_becomes_master_and_worker_pods_that_train_to_succeeded(
        training_operator, node, control_plane, core, namespace, tmp_path):
    name = "rendered"
    document = shared_job(name)
    bound_claim(control_plane, namespace, "shared")
    document["spec"]["resources"].update(cpu="500m", memory="1Gi")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=render(tmp_path, document, "pytorchjob"))

    pods = {p["metadata"]["labels"][REPLICA_LABEL]: p for p in job_pods(core, namespace, name, 2)}
    assert set(pods) == {"master", "worker"}
    # The controller makes each replica's Service after its pods: wait for both, not race them.
    watch_until(core.list_namespaced_service,
                lambda services: {f"{name}-master-0", f"{name}-worker-0"} <= {s["metadata"]["name"] for s in services},
                60, namespace=namespace)

    # What torchrun in each pod will see: the static rendezvous at the Master's Service.
    for rank, kind in enumerate(("master", "worker")):
        env = env_of(pods[kind])
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == f"{name}-master-0", kind
        assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "23456", kind
        assert (env["WORLD_SIZE"], env["RANK"], env["PET_NODE_RANK"]) == ("2", str(rank), str(rank)), kind
        assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("2", "1"), kind
        assert "PET_RDZV_BACKEND" not in env, "a fixed-size job rendezvouses statically"
        # The renderer's own env survives the operator's additions.
        assert env["HOME"] == "/tmp" and env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "30"
        spec = pods[kind]["spec"]
        container = spec["containers"][0]
        assert container["name"] == "pytorch"
        assert container["command"] == ["torchrun", "--module", "graft_trainer", "/etc/graft/spec.yaml"]
        assert container["resources"] == {"limits": {"cpu": "500m", "memory": "1Gi"},
                                          "requests": {"cpu": "500m", "memory": "1Gi"}}
        assert {"containerPort": 23456, "name": "pytorchjob-port", "protocol": "TCP"} in container["ports"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        assert spec["restartPolicy"] == "OnFailure"
        assert spec["terminationGracePeriodSeconds"] == 35  # checkpoint grace 25 s + the margin
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["graft-spec"]["configMap"]["name"] == f"{name}-spec"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/etc/graft"] == "graft-spec" and mounts["/tmp"] == "graft-tmp"
        assert mounts["/shared"] == "shared" and volumes["shared"]["persistentVolumeClaim"]["claimName"] == "shared"

    # The controller, not the test, decides the job is done: both pods trained and exited 0.
    control_plane.kubectl("wait", "-n", namespace, f"pytorchjob/{name}", "--for=condition=Succeeded",
                          "--timeout=300s")
    # Master's success is the job's (the default success policy); the Worker finishes its
    # exit on its own time.
    done = watch_until(core.list_namespaced_pod,
                       lambda pods: len(pods) == 2 and all(p["status"]["phase"] == "Succeeded" for p in pods)
                       and pods, 120, namespace=namespace, label_selector=f"{JOB_NAME_LABEL}={name}")
    master = next(p for p in done if p["metadata"]["labels"][REPLICA_LABEL] == "master")
    summary = master["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert "val_accuracy" in summary


def test_elastic_pytorchjob_gets_c10d_rendezvous_env_from_the_controller(
        training_operator, control_plane, core, namespace, tmp_path):
    """Elastic: Workers only, rendezvous over c10d at worker 0, nnodes as a range. The pods are
    pinned to a node label no node has, so they stay Pending and nothing trains."""
    document = copy.deepcopy(TINY_JOB)
    document["metadata"]["name"] = name = "elastic"
    document["spec"]["resources"].update(nodes=2, minNodes=1, maxNodes=3)
    document["spec"]["kubernetes"] = {"nodeSelector": {"graft.dev/test": "no-such-node"}}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=render(tmp_path, document, "pytorchjob"))

    pods = job_pods(core, namespace, name, 2)
    assert {p["metadata"]["labels"][REPLICA_LABEL] for p in pods} == {"worker"}
    for pod in pods:
        env = env_of(pod)
        assert env["PET_RDZV_BACKEND"] == "c10d"
        assert env["PET_RDZV_ENDPOINT"] == f"{name}-worker-0:23456"
        assert env["PET_NNODES"] == "1:3"
        assert env["PET_MAX_RESTARTS"] == "3"
        assert env["PET_NPROC_PER_NODE"] == "1"
        assert "MASTER_ADDR" not in env
        assert pod["spec"]["nodeSelector"] == {"graft.dev/test": "no-such-node"}
    job = yaml.safe_load(control_plane.kubectl("get", "-n", namespace, f"pytorchjob/{name}", "-o", "yaml").stdout)
    assert job["spec"]["elasticPolicy"]["minReplicas"] == 1 and job["spec"]["elasticPolicy"]["maxReplicas"] == 3
