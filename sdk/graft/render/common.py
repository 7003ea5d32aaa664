"""Pod-building pieces every target shares, so a container looks the same whichever operator
runs it: the spec mount, writable scratch dirs, env (secrets only by reference), resources and
the restricted-profile security context.
"""

from __future__ import annotations

from typing import Any

import yaml

from graft.spec import FineTuneJob, contracts
from graft.spec.contracts import GRACE_MARGIN_SECONDS, JOB_LABEL, SPEC_KEY, TERMINATION_LOG

SPEC_DIR = "/etc/graft"
SPEC_PATH = f"{SPEC_DIR}/{SPEC_KEY}"
WORKDIR = "/workspace"
TRAINER_COMMAND = ["torchrun", "--module", "graft_trainer", SPEC_PATH]
RUN_AS = 1000

# Scratch env the trainer needs on a read-only root filesystem; user env may override it.
BASE_ENV = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1"}

Manifest = dict[str, Any]
_SPEC_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~10x faster, same text


class RenderError(ValueError):
    """The spec asks for something the chosen target cannot express."""


def spec_configmap_name(job: FineTuneJob) -> str:
    return contracts.spec_configmap_name(job.metadata.name)


def object_meta(job: FineTuneJob, name: str, owner: Manifest | None) -> Manifest:
    """Name, namespace, the job's labels plus `graft.dev/job`, and the owner for cascading delete."""
    meta: Manifest = {"name": name}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    meta["labels"] = {**job.metadata.labels, JOB_LABEL: job.metadata.name}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    return meta


def spec_configmap(job: FineTuneJob, owner: Manifest | None) -> Manifest:
    """The FineTuneJob document (defaults filled in) that every pod reads at SPEC_PATH."""
    document = yaml.dump(job.to_document(), Dumper=_SPEC_DUMPER, sort_keys=False, default_flow_style=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(job, spec_configmap_name(job), owner),
        "data": {SPEC_KEY: document},
    }


def pod_labels(job: FineTuneJob) -> dict[str, str]:
    return {JOB_LABEL: job.metadata.name}


def termination_grace(job: FineTuneJob) -> int:
    """terminationGracePeriodSeconds: the trainer's checkpoint grace plus a margin."""
    return job.spec.checkpoint.grace_period_seconds + GRACE_MARGIN_SECONDS


def env(job: FineTuneJob) -> list[Manifest]:
    """Plain values and secretKeyRefs only: a secret's value never enters a manifest. torchrun
    waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT for its workers after passing SIGTERM on (default
    30 s): long enough for the preemption checkpoint, short of the pod's grace."""
    user = job.spec.kubernetes.env
    names = {var.name for var in user}
    base = {**BASE_ENV, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(termination_grace(job) - GRACE_MARGIN_SECONDS // 2)}
    out: list[Manifest] = [
        {"name": name, "value": value} for name, value in base.items() if name not in names
    ]
    for var in user:
        if var.secret_key_ref is not None:
            ref = var.secret_key_ref
            out.append({"name": var.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
        else:
            out.append({"name": var.name, "value": var.value})
    return out


def env_from(job: FineTuneJob) -> list[Manifest]:
    return [{"secretRef": {"name": name}} for name in job.spec.kubernetes.env_from_secrets]


def resources(job: FineTuneJob, gpus: int) -> Manifest:
    """Requests equal limits for cpu/memory (Guaranteed QoS); GPUs only as limits."""
    res = job.spec.resources
    sized = {key: value for key, value in (("cpu", res.cpu), ("memory", res.memory)) if value}
    limits = dict(sized)
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)  # a quantity, like cpu and memory
    out: Manifest = {}
    if limits:
        out["limits"] = limits
    if sized:
        out["requests"] = dict(sized)
    return out


def _needs_workdir(job: FineTuneJob) -> bool:
    return all(v.mount_path.rstrip("/") != WORKDIR for v in job.spec.kubernetes.volumes)


def volumes(job: FineTuneJob, *, shm: bool = False) -> list[Manifest]:
    """The spec ConfigMap, writable /tmp and working dir, then the user's volumes."""
    out: list[Manifest] = [
        {"name": "graft-spec", "configMap": {"name": spec_configmap_name(job)}},
        {"name": "graft-tmp", "emptyDir": {}},
    ]
    if _needs_workdir(job):
        out.append({"name": "graft-workspace", "emptyDir": {}})
    if shm:
        out.append({"name": "graft-shm", "emptyDir": {"medium": "Memory"}})
    for vol in job.spec.kubernetes.volumes:
        if vol.persistent_volume_claim is not None:
            claim: Manifest = {"claimName": vol.persistent_volume_claim}
            if vol.read_only:
                claim["readOnly"] = True
            source = {"persistentVolumeClaim": claim}
        elif vol.host_path is not None:
            source = {"hostPath": {"path": vol.host_path, "type": "DirectoryOrCreate"}}
        else:
            source = {"emptyDir": {}}
        out.append({"name": vol.name, **source})
    return out


def volume_mounts(job: FineTuneJob, *, shm: bool = False) -> list[Manifest]:
    out: list[Manifest] = [
        {"name": "graft-spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "graft-tmp", "mountPath": "/tmp"},
    ]
    if _needs_workdir(job):
        out.append({"name": "graft-workspace", "mountPath": WORKDIR})
    if shm:
        out.append({"name": "graft-shm", "mountPath": "/dev/shm"})
    for vol in job.spec.kubernetes.volumes:
        mount: Manifest = {"name": vol.name, "mountPath": vol.mount_path}
        if vol.read_only:
            mount["readOnly"] = True
        out.append(mount)
    return out


def _restricted(**extra: Any) -> Manifest:
    """What the pod and each container both state of the 'restricted' Pod Security Standard
    (non-root UID, the runtime's seccomp profile), with `extra` in between."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, **extra, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> Manifest:
    """Kubernetes 'restricted' Pod Security Standard, plus a read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            **_restricted(capabilities={"drop": ["ALL"]})}


def pod_security() -> Manifest:
    return _restricted(runAsGroup=RUN_AS, fsGroup=RUN_AS)


def container(
    job: FineTuneJob,
    name: str,
    *,
    image: str | None = None,
    command: list[str] | None = None,
    gpus: int = 0,
    ports: list[Manifest] | None = None,
    shm: bool = False,
) -> Manifest:
    """One training container; the trainer's termination-log summary surfaces in pod status."""
    k8s = job.spec.kubernetes
    out: Manifest = {"name": name, "image": image or k8s.image, "imagePullPolicy": k8s.image_pull_policy}
    if command:
        out["command"] = list(command)
    if _needs_workdir(job):
        out["workingDir"] = WORKDIR
    out["env"] = env(job)
    if k8s.env_from_secrets:
        out["envFrom"] = env_from(job)
    if ports:
        out["ports"] = ports
    sized = resources(job, gpus)
    if sized:
        out["resources"] = sized
    out["volumeMounts"] = volume_mounts(job, shm=shm)
    out["securityContext"] = container_security()
    out["terminationMessagePath"] = TERMINATION_LOG
    out["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return out


def pod_spec(job: FineTuneJob, containers: list[Manifest], *, shm: bool = False) -> Manifest:
    """Pod-level settings shared by every target: scheduling, identity, security, volumes."""
    k8s = job.spec.kubernetes
    out: Manifest = {"containers": containers}
    if k8s.service_account:
        out["serviceAccountName"] = k8s.service_account
    if k8s.node_selector:
        out["nodeSelector"] = dict(k8s.node_selector)
    if k8s.scheduler_name:
        out["schedulerName"] = k8s.scheduler_name
    if k8s.priority_class:
        out["priorityClassName"] = k8s.priority_class
    out["terminationGracePeriodSeconds"] = termination_grace(job)  # SIGTERM → checkpoint → exit
    out["securityContext"] = pod_security()
    out["volumes"] = volumes(job, shm=shm)
    return out


def pod_template(job: FineTuneJob, containers: list[Manifest], *, shm: bool = False) -> Manifest:
    return {"metadata": {"labels": pod_labels(job)}, "spec": pod_spec(job, containers, shm=shm)}
