"""kubeflow.org/v1 PyTorchJob (Training Operator v1.9): Master + Workers running torchrun.

The operator sets PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK/PET_MASTER_* for torchrun; it
requires the container to be named `pytorch` and listens on the `pytorchjob-port` port.
"""

from __future__ import annotations

from graft.render.common import Manifest, TRAINER_COMMAND, container, object_meta, pod_template
from graft.spec import FineTuneJob
from graft.spec.contracts import CHILD_KINDS

CHILD = CHILD_KINDS["pytorchjob"]
MASTER_PORT = 23456


def render_pytorchjob(job: FineTuneJob, owner: Manifest | None = None) -> Manifest:
    res = job.spec.resources
    spec: Manifest = {"nprocPerNode": str(res.procs_per_node), "runPolicy": _run_policy(job)}
    elastic = res.min_nodes is not None
    if elastic:
        # Elastic jobs rendezvous over c10d among Workers only (no fixed Master).
        spec["elasticPolicy"] = {
            "minReplicas": res.min_nodes,
            "maxReplicas": res.max_nodes,
            "rdzvBackend": "c10d",
            "maxRestarts": job.spec.kubernetes.backoff_limit,
        }
        spec["pytorchReplicaSpecs"] = {"Worker": _replica(job, res.nodes)}
    else:
        replicas = {"Master": _replica(job, 1)}
        if res.nodes > 1:
            replicas["Worker"] = _replica(job, res.nodes - 1)
        spec["pytorchReplicaSpecs"] = replicas
    return {
        "apiVersion": CHILD.api_version,
        "kind": CHILD.kind,
        "metadata": object_meta(job, job.metadata.name, owner),
        "spec": spec,
    }


def _replica(job: FineTuneJob, replicas: int) -> Manifest:
    ports = [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    trainer = container(
        job, "pytorch", command=TRAINER_COMMAND, gpus=job.spec.resources.gpus_per_node, ports=ports
    )
    return {"replicas": replicas, "restartPolicy": "OnFailure", "template": pod_template(job, [trainer])}


def _run_policy(job: FineTuneJob) -> Manifest:
    k8s = job.spec.kubernetes
    policy: Manifest = {"cleanPodPolicy": k8s.clean_pod_policy, "backoffLimit": k8s.backoff_limit}
    if k8s.ttl_seconds_after_finished is not None:
        policy["ttlSecondsAfterFinished"] = k8s.ttl_seconds_after_finished
    if k8s.active_deadline_seconds is not None:
        policy["activeDeadlineSeconds"] = k8s.active_deadline_seconds
    policy["suspend"] = job.spec.suspend
    if k8s.scheduler_name:
        # Gang scheduling: the whole job is admitted only when every node can start.
        gang: Manifest = {"minAvailable": job.spec.resources.min_nodes or job.spec.resources.nodes}
        if k8s.queue:
            gang["queue"] = k8s.queue
        if k8s.priority_class:
            gang["priorityClass"] = k8s.priority_class
        policy["schedulingPolicy"] = gang
    return policy
