"""ray.io/v1 RayJob (KubeRay v1.7): a RayCluster with one Ray worker pod per training process.

KubeRay generates the `ray start` command itself, so Ray containers carry no command; the
entrypoint runs the Ray Train path of the trainer on the head. The image already holds the
trainer and pod env reaches every Ray worker, so no runtimeEnvYAML is needed.

In K8sJobMode KubeRay runs `ray job submit` from a Job of its own; its default pod has no
security context and no Graft label, so Graft supplies that pod's template too.
"""

from __future__ import annotations

from graft.render.common import (
    Manifest, RenderError, SPEC_PATH, container, container_security, object_meta, pod_labels,
    pod_security, pod_template, termination_grace,
)
from graft.spec import FineTuneJob
from graft.spec.contracts import CHILD_KINDS, RAY_DRIVER_ROLE, ROLE_LABEL

CHILD = CHILD_KINDS["rayjob"]
ENTRYPOINT = f"python -m graft_trainer.ray_train {SPEC_PATH}"
HEAD_PORTS = [
    {"name": "gcs-server", "containerPort": 6379, "protocol": "TCP"},
    {"name": "dashboard", "containerPort": 8265, "protocol": "TCP"},
    {"name": "client", "containerPort": 10001, "protocol": "TCP"},
]
SUBMITTER_CONTAINER = "ray-job-submitter"  # KubeRay's name for the container of its default pod
# `ray job submit` + `ray job logs --follow` only talk HTTP to the dashboard: a small, fixed size.
SUBMITTER_RESOURCES = {"cpu": "500m", "memory": "512Mi"}


def render_rayjob(job: FineTuneJob, owner: Manifest | None = None) -> Manifest:
    k8s = job.spec.kubernetes
    meta = object_meta(job, job.metadata.name, owner)
    meta["labels"].update(_batch_scheduler_labels(job))
    spec: Manifest = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": k8s.ray_submission_mode,
        "shutdownAfterJobFinishes": True,
        "backoffLimit": k8s.backoff_limit,
        "suspend": job.spec.suspend,
    }
    if k8s.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = k8s.ttl_seconds_after_finished
    if k8s.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = k8s.active_deadline_seconds
    spec["rayClusterSpec"] = _cluster(job)
    if k8s.ray_submission_mode == "K8sJobMode":  # SidecarMode refuses the field, HTTPMode has no pod
        spec["submitterPodTemplate"] = _submitter(job)
    return {"apiVersion": CHILD.api_version, "kind": CHILD.kind, "metadata": meta, "spec": spec}


def _cluster(job: FineTuneJob) -> Manifest:
    res = job.spec.resources
    image = _ray_image(job)
    head = container(job, "ray-head", image=image, ports=HEAD_PORTS, shm=True)
    worker = container(
        job, "ray-worker", image=image, gpus=res.gpus_per_node // res.procs_per_node, shm=True
    )
    group: Manifest = {
        "groupName": "workers",
        "replicas": res.world_size,
        "minReplicas": (res.min_nodes or res.nodes) * res.procs_per_node,
        "maxReplicas": (res.max_nodes or res.nodes) * res.procs_per_node,
        "rayStartParams": {},
        "template": pod_template(job, [worker], shm=True),
    }
    head_params = {"dashboard-host": "0.0.0.0"}
    if job.spec.ray.ingest != "ray-data":
        # num-cpus 0 keeps training workers off the head; it only drives the job. With Ray
        # Data ingest its CPUs run the read tasks, which the training workers leave no room for.
        head_params["num-cpus"] = "0"
    cluster: Manifest = {
        "headGroupSpec": {
            "rayStartParams": head_params,
            "template": pod_template(job, [head], shm=True),
        },
        "workerGroupSpecs": [group],
    }
    if res.min_nodes is not None:
        cluster["enableInTreeAutoscaling"] = True
    return cluster


def _ray_image(job: FineTuneJob) -> str:
    return job.spec.kubernetes.ray_image or job.spec.kubernetes.image


def _submitter(job: FineTuneJob) -> Manifest:
    """The submitter pod, restricted like the training pods and labelled so the operator and
    `graft logs` find it. No command: KubeRay fills in its `ray job submit` script (and appends
    PYTHONUNBUFFERED and the dashboard address to env) when the first container has none.
    The pod holds no user env or secrets, as it never touches the data."""
    k8s = job.spec.kubernetes
    submitter: Manifest = {
        "name": SUBMITTER_CONTAINER,
        "image": _ray_image(job),  # the head's image, as KubeRay's default submitter uses
        "imagePullPolicy": k8s.image_pull_policy,
        "env": [{"name": "HOME", "value": "/tmp"}],  # the ray CLI writes under HOME; root fs is read-only
        "resources": {"limits": dict(SUBMITTER_RESOURCES), "requests": dict(SUBMITTER_RESOURCES)},
        "volumeMounts": [{"name": "graft-tmp", "mountPath": "/tmp"}],
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "metadata": {"labels": {**pod_labels(job), ROLE_LABEL: RAY_DRIVER_ROLE}},
        "spec": {
            "restartPolicy": "Never",  # a Job's pods must not restart in place; the Job retries
            "terminationGracePeriodSeconds": termination_grace(job),
            "securityContext": pod_security(),
            "containers": [submitter],
            "volumes": [{"name": "graft-tmp", "emptyDir": {}}],
        },
    }


def _batch_scheduler_labels(job: FineTuneJob) -> dict[str, str]:
    """KubeRay's batch-scheduler integration is driven by labels on the RayJob."""
    k8s = job.spec.kubernetes
    if k8s.queue and k8s.scheduler_name != "volcano":
        raise RenderError(
            "kubernetes.queue: a RayJob can name a queue only with schedulerName 'volcano' "
            "(KubeRay batch scheduling); set schedulerName: volcano or drop queue"
        )
    labels: dict[str, str] = {}
    if k8s.scheduler_name:
        labels["ray.io/scheduler-name"] = k8s.scheduler_name
    if k8s.queue:
        labels["volcano.sh/queue-name"] = k8s.queue
    return labels
