"""trainer.kubeflow.org/v1alpha1 TrainJob (Kubeflow Trainer v2.3) and the ClusterTrainingRuntime
Graft ships for it.

The runtime holds what every Graft job shares (torchrun command, security context, scratch
dirs); each TrainJob adds its own pieces through a runtime patch, the only place Trainer v2.3
lets a job add volumes: the spec ConfigMap, the user's volumes, env and pod placement.
"""

from __future__ import annotations

from graft.render.common import (
    WORKDIR,
    Manifest,
    RenderError,
    TRAINER_COMMAND,
    container_security,
    env,
    object_meta,
    pod_labels,
    pod_security,
    resources,
    termination_grace,
    volume_mounts,
    volumes,
)
from graft.spec import FineTuneJob
from graft.spec.contracts import CHILD_KINDS, TERMINATION_LOG
from graft.spec.models import Kubernetes

CHILD = CHILD_KINDS["trainjob"]
RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_NAME = "graft-torch-distributed"
NODE = "node"  # the replicated job and container the torch plugin injects PET_* env into
PATCH_MANAGER = "graft.dev/renderer"
RUNTIME_VOLUMES = [
    {"name": "graft-tmp", "emptyDir": {}},
    {"name": "graft-workspace", "emptyDir": {}},
]
# Set per runtime, not per TrainJob (v2.3's runtime patches reach only the pod template's
# volumes, env and placement): the runtime carries the spec's defaults, and a job asking for
# other values is refused rather than silently given these.
RUNTIME_SETTINGS = {
    "backoffLimit": Kubernetes.model_fields["backoff_limit"].default,
    "imagePullPolicy": Kubernetes.model_fields["image_pull_policy"].default,
}
RUNTIME_MOUNTS = [
    {"name": "graft-tmp", "mountPath": "/tmp"},
    {"name": "graft-workspace", "mountPath": WORKDIR},
]
_RUNTIME_VOLUME_NAMES = {v["name"] for v in RUNTIME_VOLUMES}
# Set by the Trainer's torch plugin for torchrun; its validating webhook refuses a TrainJob whose
# trainer env sets any of them.
TORCH_PLUGIN_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


def render_trainjob(job: FineTuneJob, owner: Manifest | None = None) -> Manifest:
    _check_expressible(job)
    res = job.spec.resources
    trainer: Manifest = {
        "image": job.spec.kubernetes.image,
        "command": list(TRAINER_COMMAND),
        "numNodes": res.nodes,
        "numProcPerNode": res.procs_per_node,
        "env": env(job),
    }
    sized = resources(job, res.gpus_per_node)
    if sized:
        trainer["resourcesPerNode"] = sized
    spec: Manifest = {
        "runtimeRef": {
            "apiGroup": CHILD.group,
            "kind": RUNTIME_KIND,
            "name": job.spec.kubernetes.training_runtime,
        },
        "suspend": job.spec.suspend,
    }
    if job.spec.kubernetes.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = job.spec.kubernetes.active_deadline_seconds
    spec["trainer"] = trainer
    spec["runtimePatches"] = [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": _patch(job)}]
    return {
        "apiVersion": CHILD.api_version,
        "kind": CHILD.kind,
        "metadata": object_meta(job, job.metadata.name, owner),
        "spec": spec,
    }


def _patch(job: FineTuneJob) -> Manifest:
    k8s = job.spec.kubernetes
    mounts = [m for m in volume_mounts(job) if m["name"] not in _RUNTIME_VOLUME_NAMES]
    pod: Manifest = {
        "containers": [{"name": NODE, "volumeMounts": mounts}],
        "volumes": [v for v in volumes(job) if v["name"] not in _RUNTIME_VOLUME_NAMES],
        "terminationGracePeriodSeconds": termination_grace(job),  # SIGTERM → checkpoint → exit
    }
    if k8s.service_account:
        pod["serviceAccountName"] = k8s.service_account
    if k8s.node_selector:
        pod["nodeSelector"] = dict(k8s.node_selector)
    node_job = {
        "name": NODE,
        "template": {"spec": {"template": {"metadata": {"labels": pod_labels(job)}, "spec": pod}}},
    }
    return {"template": {"spec": {"replicatedJobs": [node_job]}}}


def _check_expressible(job: FineTuneJob) -> None:
    """Trainer v2.3 sets these per runtime, not per job: refuse rather than drop them silently."""
    k8s, res = job.spec.kubernetes, job.spec.resources
    unsupported = {
        "kubernetes.envFromSecrets": bool(k8s.env_from_secrets),
        "kubernetes.schedulerName": bool(k8s.scheduler_name),
        "kubernetes.queue": bool(k8s.queue),
        "kubernetes.priorityClass": bool(k8s.priority_class),
        "resources.minNodes/maxNodes": res.min_nodes is not None,
    }
    problems = [f"{field}: not expressible in a TrainJob (Trainer v2.3 sets it in the runtime)"
                for field, used in unsupported.items() if used]
    problems += [
        f"kubernetes.volumes[{i}].mountPath: {v.mount_path} is a scratch dir of the Graft runtime"
        for i, v in enumerate(k8s.volumes)
        if v.mount_path.rstrip("/") in {"/tmp", WORKDIR}
    ]
    asked = {"backoffLimit": k8s.backoff_limit, "imagePullPolicy": k8s.image_pull_policy}
    problems += [
        f"kubernetes.{field}: {asked[field]} differs from the Graft runtime's {value} "
        "(Trainer v2.3 takes it from the runtime, not the TrainJob)"
        for field, value in RUNTIME_SETTINGS.items() if asked[field] != value
    ]
    problems += [
        f"kubernetes.env[{i}].name: {var.name} is set by the Trainer's torch plugin"
        for i, var in enumerate(k8s.env)
        if var.name in TORCH_PLUGIN_ENV
    ]
    if problems:
        raise RenderError("; ".join(problems) + "; use target pytorchjob or rayjob for these")


def render_training_runtime(image: str, name: str = RUNTIME_NAME) -> Manifest:
    """The ClusterTrainingRuntime Graft ships: one torchrun node per TrainJob node, restricted pods."""
    node_container = {
        "name": NODE,
        "image": image,
        "imagePullPolicy": RUNTIME_SETTINGS["imagePullPolicy"],
        "command": list(TRAINER_COMMAND),
        "workingDir": WORKDIR,
        "volumeMounts": [dict(m) for m in RUNTIME_MOUNTS],
        "securityContext": container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = {
        "containers": [node_container],
        "restartPolicy": "OnFailure",
        "securityContext": pod_security(),
        "volumes": [dict(v) for v in RUNTIME_VOLUMES],
    }
    node_job = {
        "name": NODE,
        "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {"backoffLimit": RUNTIME_SETTINGS["backoffLimit"], "template": {"spec": pod}},
        },
    }
    return {
        "apiVersion": CHILD.api_version,
        "kind": RUNTIME_KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "graft"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [node_job]}},
        },
    }
