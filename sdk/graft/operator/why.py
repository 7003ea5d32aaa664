"""Why a job's pods are not running yet, in words, from pod (and event) dicts as the API returns
them. Pure: the operator puts the answer in a status condition, so users read it with
`kubectl describe ftj` instead of digging through pods."""

from __future__ import annotations

from typing import Any

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


def explain_pending(pods: list[dict[str, Any]], events: list[dict[str, Any]] = ()) -> str | None:
    """One line per stuck pod, or None when no pod is waiting on anything."""
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
