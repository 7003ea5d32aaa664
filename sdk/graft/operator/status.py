"""FineTuneJob.status computed from what the children report. Pure functions over the dicts the
API returns, so each mapping is unit-tested with real objects and the handlers stay thin.

Every function returns a partial status (camelCase keys, as stored); `merge` folds one into the
current status and says whether anything changed, so the operator writes only real changes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

PROGRESS_PREFIX = "graft-progress "

# Condition types the operator sets itself (the child's own types are mirrored beside them).
VALID = "Valid"
CHILD_CREATED = "ChildCreated"
PODS_READY = "PodsReady"
SPEC_CHANGE_REJECTED = "SpecChangeRejected"

# Keys of a graft-progress line (metrics.jsonl names) -> status.progress keys.
PROGRESS_KEYS = {
    "epoch": "epoch", "epochs": "epochs", "train_loss": "trainLoss", "val_loss": "valLoss",
    "val_accuracy": "valAccuracy", "val_macro_f1": "valMacroF1",
}

# PyTorchJob (kubeflow common JobStatus) condition type -> FineTuneJob phase.
KUBEFLOW_PHASES = {
    "Created": "Pending",
    "Running": "Running",
    "Restarting": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Suspended": "Suspended",
}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message, "lastTransitionTime": now()}


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
    return _drop_none(mirrored)


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
    return _drop_none({"phase": phase, "startTime": status.get("startTime"),
                       "completionTime": status.get("endTime"), "conditions": conditions})


def _mirrored(cond: dict[str, Any]) -> dict[str, Any]:
    keys = ("type", "status", "reason", "message", "lastTransitionTime")
    return {k: cond[k] for k in keys if cond.get(k) is not None}


def from_pods(pods: list[dict[str, Any]], pending_why: str | None, metric: str) -> dict[str, Any]:
    """Restarts across the job's pods, the trainer's final summary, and why pods are stuck."""
    restarts = sum(
        c.get("restartCount") or 0
        for pod in pods
        for c in (pod.get("status") or {}).get("containerStatuses") or []
    )
    update: dict[str, Any] = {"restarts": restarts}
    for pod in pods:
        summary = termination_summary(pod)
        if summary is not None:
            update.update(from_progress(summary, metric))
    if pending_why:
        update["conditions"] = [condition(PODS_READY, False, "PodsPending", pending_why)]
    elif pods:
        update["conditions"] = [condition(PODS_READY, True, "PodsStarted", "no pod is stuck")]
    return update


def termination_summary(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's final summary JSON, which Kubernetes copies from /dev/termination-log."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        parsed = _json_object(terminated.get("message"))
        if parsed is not None:
            return parsed
    return None


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """The JSON object of a `graft-progress {...}` log line, None for any other line. The
    prefix may follow another one: Ray forwards worker output as `(RayTrainWorker pid=..) ...`."""
    start = line.find(PROGRESS_PREFIX + "{")
    if start < 0:
        return None
    return _json_object(line[start + len(PROGRESS_PREFIX):])


def from_progress(report: dict[str, Any], metric: str) -> dict[str, Any]:
    """Status fields from a graft-progress line or the final summary (the same snake_case keys
    as metrics.jsonl). `metric` is spec.training.bestMetric, the value bestMetric tracks."""
    progress = {camel: report[key] for key, camel in PROGRESS_KEYS.items()
                if isinstance(report.get(key), (int, float))}
    update: dict[str, Any] = {}
    if progress:
        if "epoch" in progress and "epochs" in progress:
            progress["summary"] = f"{progress['epoch']}/{progress['epochs']} epochs"
        update["progress"] = progress
    best = report.get("best_value", report.get(metric))
    if isinstance(best, (int, float)):
        update["bestMetric"] = _drop_none(
            {"name": metric, "value": float(best), "epoch": report.get("best_epoch", report.get("epoch"))}
        )
    checkpoint = report.get("checkpoint")
    if checkpoint:
        update["lastCheckpoint"] = str(checkpoint)
    return update


def _better(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    if not old or old.get("name") != new.get("name"):
        return True
    if new.get("name") == "val_loss":
        return new["value"] < old["value"]
    return new["value"] > old["value"]


def merge(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any] | None:
    """`current` with `update` applied (conditions merged by type), or None if nothing changed.

    A condition keeps its lastTransitionTime while its status stays the same, as Kubernetes
    conventions ask, so re-applying the same facts is a no-op and writes nothing.
    """
    merged = {**current, **{k: v for k, v in update.items() if k != "conditions"}}
    if "bestMetric" in update and not _better(update["bestMetric"], current.get("bestMetric")):
        merged["bestMetric"] = current["bestMetric"]  # the best only ever improves
    if "conditions" in update:
        by_type = {c["type"]: c for c in current.get("conditions") or []}
        for cond in update["conditions"]:
            old = by_type.get(cond["type"])
            if old and old.get("status") == cond.get("status") and "lastTransitionTime" in old:
                cond = {**cond, "lastTransitionTime": old["lastTransitionTime"]}
            by_type[cond["type"]] = cond
        merged["conditions"] = list(by_type.values())
    return None if merged == current else merged


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
