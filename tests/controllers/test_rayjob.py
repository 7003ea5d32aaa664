"""`graft render --target rayjob` proven by the real KubeRay operator: it makes the RayJob's
RayCluster (head + a worker group with the replicas asked) and its pods from the rendered
templates. Where it stops here: the RayJob waits for its RayCluster's head to be ready before it
creates the submitter, and the head only becomes ready once `ray start --head` runs in a
container; these pods are pinned to a node label no node has, so they stay Pending (the node
stand-in runs processes, not Ray's head image, and KubeRay reaches the dashboard by the head
Service's cluster DNS name, which does not resolve out of cluster)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane.controllers import watch_until  # noqa: E402
from sdk_specs import TINY_JOB  # noqa: E402
from test_pytorchjob import render  # noqa: E402

pytestmark = pytest.mark.controlplane


def test_rendered_rayjob_becomes_a_raycluster_with_head_and_workers(kuberay, control_plane, namespace, tmp_path):
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(str(control_plane.kubeconfig)))
    document = copy.deepcopy(TINY_JOB)
    document["metadata"]["name"] = name = "ray-digits"
    document["spec"]["backend"] = "rayjob"
    document["spec"]["resources"].update(nodes=2, cpu="1", memory="2Gi")
    document["spec"]["kubernetes"] = {"nodeSelector": {"graft.dev/test": "no-such-node"}}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=render(tmp_path, document, "rayjob"))

    pods = watch_until(core.list_namespaced_pod, lambda items: len(items) >= 3 and items, 120,
                       namespace=namespace, label_selector="ray.io/is-ray-node=yes")
    by_type = {}
    for pod in pods:
        by_type.setdefault(pod["metadata"]["labels"]["ray.io/node-type"], []).append(pod)
    assert len(by_type["head"]) == 1 and len(by_type["worker"]) == 2
    clusters = json.loads(control_plane.kubectl("get", "-n", namespace, "rayclusters", "-o", "json").stdout)["items"]
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    assert [g["replicas"] for g in cluster["spec"]["workerGroupSpecs"]] == [2]
    for pod in by_type["worker"]:
        worker = pod["spec"]["containers"][0]
        assert worker["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
        assert pod["spec"]["nodeSelector"] == {"graft.dev/test": "no-such-node"}
        assert "ray start" in " ".join(worker.get("args", []) + worker.get("command", []))
    head = by_type["head"][0]["spec"]["containers"][0]
    assert "--head" in " ".join(head.get("args", []) + head.get("command", []))
    job = json.loads(control_plane.kubectl("get", "-n", namespace, f"rayjob/{name}", "-o", "json").stdout)
    assert job["spec"]["entrypoint"] == "python -m graft_trainer.ray_train /etc/graft/spec.yaml"
    # No submitter yet: KubeRay creates it only once the head is ready.
    jobs = json.loads(control_plane.kubectl("get", "-n", namespace, "jobs.batch", "-o", "json").stdout)["items"]
    assert jobs == []
    assert job.get("status", {}).get("jobDeploymentStatus") in (None, "", "Initializing")
