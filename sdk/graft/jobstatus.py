"""A job's state read from the objects the cluster returns, for both the SDK's Kubernetes
backend and the operator: the phase of a child job, the trainer's final summary in pod status,
why pods are stuck, and the patch that suspends a child. Pure functions over the dicts the API
returns (camelCase keys, as stored), so each mapping is tested with real objects.
"""

from __future__ import annotations

from typing import Any

from graft.spec.contracts import SUSPEND_PATHS, read_termination_message

# PyTorchJob (kubeflow common JobStatus) condition type -> FineTuneJob phase.
KUBEFLOW_PHASES = {
    "Created": "Pending",
    "Running": "Running",
    "Restarting": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Suspended": "Suspended",
}

# Container waiting reasons that mean "stuck", as opposed to a normal ContainerCreating.
STUCK_WAITING = {
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError",
}

HINTS = {
    "Unschedulable": "no node fits the pod: lower spec.resources (gpusPerNode, cpu, memory) or "
    "add nodes that have them",
    "ErrImagePull": "check spec.kubernetes.image and that the cluster can pull it",
    "ImagePullBackOff": "check spec.kubernetes.image and that the cluster can pull it",
    "InvalidImageName": "spec.kubernetes.image is not a valid image reference",
    "CreateContainerConfigError": "a Secret or ConfigMap the pod references is missing",
    "CrashLoopBackOff": "the trainer keeps exiting: read the pod logs",
}


def from_child(child: dict[str, Any]) -> dict[str, Any]:
    """Phase, times and conditions of a PyTorchJob, TrainJob or RayJob, as FineTuneJob status."""
    kind = child.get("kind")
    status = child.get("status") or {}
    if kind == "RayJob":
        return _from_rayjob(status)
    conditions = [_mirrored(c) for c in status.get("conditions") or []]
    if kind == "TrainJob":
        phase, completion = _trainjob_phase(status)
        mirrored = {"phase": phase, "completionTime": completion}
    else:
        mirrored = {
            "phase": _kubeflow_phase(status.get("conditions") or []),
            "startTime": status.get("startTime"),
            "completionTime": status.get("completionTime"),
        }
    mirrored["conditions"] = conditions
    return drop_none(mirrored)


def _kubeflow_phase(conditions: list[dict[str, Any]]) -> str:
    """The newest true condition wins, as the training operator appends them in order."""
    phase = "Pending"
    for cond in conditions:
        if cond.get("status") == "True" and cond.get("type") in KUBEFLOW_PHASES:
            phase = KUBEFLOW_PHASES[cond["type"]]
    return phase


def _trainjob_phase(status: dict[str, Any]) -> tuple[str, str | None]:
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for cond_type, phase in (("Complete", "Succeeded"), ("Failed", "Failed")):
        if cond_type in true:
            return phase, true[cond_type].get("lastTransitionTime")
    if "Suspended" in true:
        return "Suspended", None
    busy = any((j.get("active") or 0) + (j.get("ready") or 0) for j in status.get("jobsStatus") or [])
    return ("Running" if busy else "Pending"), None


def _from_rayjob(status: dict[str, Any]) -> dict[str, Any]:
    deployment = status.get("jobDeploymentStatus") or ""
    job_status = status.get("jobStatus") or ""
    if deployment == "Complete":
        phase = "Succeeded" if job_status == "SUCCEEDED" else "Failed"
    elif deployment in ("Failed", "ValidationFailed"):
        phase = "Failed"
    elif deployment in ("Suspended", "Suspending"):
        phase = "Suspended"
    elif deployment in ("Running", "Retrying"):
        phase = "Running"
    else:
        phase = "Pending"
    conditions = []
    if deployment:
        message = status.get("message") or f"Ray job status {job_status or 'unknown'}"
        conditions.append({"type": "RayJobDeployment", "status": "True", "reason": deployment,
                           "message": message})
    return drop_none({"phase": phase, "startTime": status.get("startTime"),
                      "completionTime": status.get("endTime"), "conditions": conditions})


def _mirrored(cond: dict[str, Any]) -> dict[str, Any]:
    keys = ("type", "status", "reason", "message", "lastTransitionTime")
    return {k: cond[k] for k in keys if cond.get(k) is not None}


def termination_summary(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's final summary, which Kubernetes copies from its termination log into the
    container status; None until a container has ended with one."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        summary = read_termination_message(terminated.get("message"))
        if summary is not None:
            return summary.as_dict()
    return None


def explain_pending(pods: list[dict[str, Any]], events: list[dict[str, Any]] = ()) -> str | None:
    """Why a job's pods are not running yet, in words: one line per stuck pod, or None when no
    pod is waiting on anything. The operator puts it in a status condition, the SDK in `why`."""
    lines = [line for pod in pods for line in _pod_problems(pod, events)]
    return "; ".join(lines) or None


def _pod_problems(pod: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending", "Running"):
        return []
    problems = []
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            problems.append(_sentence(name, "not scheduled", condition.get("reason"),
                                      condition.get("message")))
    for container in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            problems.append(_sentence(f"{name}/{container.get('name')}", "waiting",
                                      waiting["reason"], waiting.get("message")))
    if not problems and status.get("phase") == "Pending":
        problems += [
            _sentence(name, "event", event.get("reason"), event.get("message"))
            for event in events
            if event.get("type") == "Warning"
            and (event.get("involvedObject") or {}).get("name") == name
        ]
    return problems


def _sentence(subject: str, what: str, reason: str | None, message: str | None) -> str:
    text = f"pod {subject} {what}: {reason or 'unknown reason'}"
    if message:
        text += f" ({message.strip()})"
    if reason in HINTS:
        text += f"; {HINTS[reason]}"
    return text


def suspend_patch(backend: str, suspend: bool) -> dict[str, Any]:
    """Merge patch that flips the child's own suspend switch."""
    patch: Any = suspend
    for key in reversed(SUSPEND_PATHS[backend]):
        patch = {key: patch}
    return patch


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
