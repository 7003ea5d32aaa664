"""FineTuneJob.status computed from what the children report. Pure functions over the dicts the
API returns, so each mapping is unit-tested with real objects and the handlers stay thin.

Every function returns a partial status (camelCase keys, as stored); `merge` folds one into the
current status and says whether anything changed, so the operator writes only real changes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from graft.jobstatus import drop_none, from_child, termination_summary  # noqa: F401 (st.from_child)
from graft.spec.contracts import read_progress

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


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message, "lastTransitionTime": now()}


def from_pods(pods: list[dict[str, Any]], pending_why: str | None, metric: str) -> dict[str, Any]:
    """Restarts across the job's pods, the trainer's final summary, and why pods are stuck."""
    restarts = sum(
        c.get("restartCount") or 0
        for pod in pods
        for c in (pod.get("status") or {}).get("containerStatuses") or []
    )
    update: dict[str, Any] = {"restarts": restarts, **from_summaries(pods, metric)}
    if pending_why:
        update["conditions"] = [condition(PODS_READY, False, "PodsPending", pending_why)]
    elif pods:
        update["conditions"] = [condition(PODS_READY, True, "PodsStarted", "no pod is stuck")]
    return update


def from_summaries(pods: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The trainer's final summary (its termination message), from whichever pod carries it."""
    update: dict[str, Any] = {}
    for pod in pods:
        summary = termination_summary(pod)
        if summary is not None:
            update.update(from_progress(summary, metric))
    return update


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """The fields of a `graft-progress` log line, None for any other line."""
    progress = read_progress(line)
    return None if progress is None else progress.as_dict()


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
        update["bestMetric"] = drop_none(
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
