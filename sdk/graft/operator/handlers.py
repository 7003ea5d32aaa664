"""kopf handlers: thin glue from watch events to the pure decisions in reconcile/status/why.

Every handler is a plain function of the kwargs kopf passes (body, memo, index…), so tests call
them directly with real dicts. `memo.kube` is the API (kube.Kube), `memo.book` the status
writer (book.StatusBook); both are set up at startup. The FineTuneJob handlers return how they
ended (a `graft_reconcile_total` result) to `metrics.reconciler`, which counts and times them.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from graft.operator import metrics
from graft.operator import status as st
from graft.operator.book import JobKey, StatusBook, Transition
from graft.operator.kube import CHILD_RESOURCES, FINETUNEJOB, ChildConflict, Kube
from graft.jobstatus import explain_pending, suspend_patch
from graft.operator.reconcile import changed_spec_paths, desired_children, job_from_body
from graft.render import RenderError
from graft.spec import SpecError
from graft.spec.contracts import (
    FINETUNEJOB as FINETUNEJOB_KIND, JOB_LABEL, OPERATOR_ANNOTATION_PREFIX as STORAGE_PREFIX,
    RAY_DRIVER_ROLE, ROLE_LABEL, backend_of,
)

TERMINAL = ("Succeeded", "Failed")
# Labels that mark the pod whose logs carry rank 0's graft-progress lines.
RANK0_LABELS = (
    ("training.kubeflow.org/replica-type", "master"),  # PyTorchJob Master
    ("batch.kubernetes.io/job-completion-index", "0"),  # TrainJob node 0 (JobSet)
    (ROLE_LABEL, RAY_DRIVER_ROLE),  # RayJob submitter: the driver log carries the workers' output
)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping in our own annotations and out of status; post only the
    framework's warnings (handler failures), as our handlers post their own events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    if "kube" not in memo:
        memo.kube = Kube.from_environment()
    memo.book = StatusBook(memo.kube)
    metrics.count_phases_of(memo.book)


@kopf.index(*FINETUNEJOB)
def finetunejobs(namespace: str, name: str, uid: str, spec: dict[str, Any],
                 status: dict[str, Any], **_: Any):
    """What child/pod handlers need of each job, kept current by the watch, costing no GET."""
    metric = (spec.get("training") or {}).get("bestMetric", "val_accuracy")
    return {(namespace, name): {"uid": uid, "status": dict(status), "metric": metric}}


@kopf.on.resume(*FINETUNEJOB)
@kopf.on.create(*FINETUNEJOB)
@metrics.reconciler
def create_children(body: dict[str, Any], memo: kopf.Memo, patch: dict[str, Any], **_: Any) -> str:
    """Validate, render, create ConfigMap + child (idempotent), and say so in status/events."""
    meta, current = body["metadata"], dict(body.get("status") or {})
    if current.get("phase") in TERMINAL:
        return "finished"  # a finished job stays finished when the operator restarts
    key = JobKey(meta["namespace"], meta["name"], meta["uid"])
    try:
        job = job_from_body(body)
        objects = desired_children(body, job)
    except (SpecError, RenderError) as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        _report(memo, body, patch, key, current, {
            "phase": "Failed",
            "message": "invalid FineTuneJob: " + "; ".join(problems),
            "conditions": [st.condition(st.VALID, False, "InvalidSpec", "; ".join(problems))],
        }, "InvalidSpec", str(exc))
        return "invalid"
    try:
        created = [memo.kube.create_or_verify(obj, body) for obj in objects]
    except ChildConflict as exc:
        _report(memo, body, patch, key, current, {
            "phase": "Failed", "message": str(exc),
            "conditions": [st.condition(st.CHILD_CREATED, False, "NameTaken", str(exc))],
        }, "NameTaken", str(exc))
        return "rejected"
    for obj, was_created in zip(objects, created):
        if was_created:
            metrics.CHILDREN_CREATED.labels(obj["kind"]).inc()
    child = objects[-1]
    names = " and ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects)
    message = f"created {names}" if all(created) else f"{names} already exist and belong to this job"
    _report(memo, body, patch, key, current, {
        "phase": current.get("phase") or ("Suspended" if job.spec.suspend else "Pending"),
        "child": {"apiVersion": child["apiVersion"], "kind": child["kind"], "name": child["metadata"]["name"]},
        "conditions": [
            st.condition(st.VALID, True, "SpecValid", "the spec passed validation"),
            st.condition(st.CHILD_CREATED, True, "Created", message),
        ],
    }, "Created" if any(created) else "ChildExists", message, event_type="Normal")
    return "created" if any(created) else "exists"


@kopf.on.update(*FINETUNEJOB, field="spec")
@metrics.reconciler
def spec_changed(old: Any, new: Any, body: dict[str, Any], memo: kopf.Memo, patch: dict[str, Any],
                 **_: Any) -> str:
    """A running job keeps the spec it started with; only spec.suspend reaches the child."""
    meta, current = body["metadata"], dict(body.get("status") or {})
    child = current.get("child")
    if not child:  # never started (e.g. the spec was invalid): the new spec gets a fresh try
        # the unwrapped handler: this reconcile is counted once, as spec_changed's
        return create_children.__wrapped__(body=body, memo=memo, patch=patch)
    key = JobKey(meta["namespace"], meta["name"], meta["uid"])
    paths = changed_spec_paths(old, new)
    rejected = [f"spec.{p}" for p in paths if p != "suspend"]
    if rejected:
        message = (
            f"changes to {', '.join(rejected)} were not applied: {child['kind']} {child['name']} "
            "keeps running with the spec it was created from; only spec.suspend can change. "
            "Delete and re-create the FineTuneJob to run with the new spec."
        )
        _report(memo, body, patch, key, current, {
            "conditions": [st.condition(st.SPEC_CHANGE_REJECTED, True, "SpecIsImmutable", message)],
        }, "SpecChangeRejected", message)
    if "suspend" in paths:
        suspend = bool((new or {}).get("suspend"))
        memo.kube.patch_child(child["kind"], meta["namespace"], child["name"],
                              suspend_patch(backend_of(child["kind"]), suspend))
        verb = "suspended" if suspend else "resumed"
        memo.kube.event(body, "Normal", verb.capitalize(), f"{child['kind']} {child['name']} {verb}")
    return "rejected" if rejected else "applied"


@kopf.on.event(*FINETUNEJOB)
def finetunejob_seen(type: str | None, uid: str, status: dict[str, Any], memo: kopf.Memo,
                     **_: Any) -> None:
    """Deleted jobs leave the book; the others count in their phase even if never written to."""
    if type == "DELETED":
        memo.book.forget(uid)
    else:
        memo.book.observe(uid, dict(status))


def mirror_child(body: dict[str, Any], memo: kopf.Memo, finetunejobs: kopf.Index, **_: Any) -> None:
    """The child's phase, times and conditions, copied into its FineTuneJob's status."""
    parent = _parent(body, finetunejobs)
    if parent is not None:
        key, seen, _ = parent
        _apply(memo, key, seen, st.from_child(body), source=f"{body['kind']} {body['metadata']['name']}")


for _kind, (_group, _version, _plural) in CHILD_RESOURCES.items():
    kopf.on.event(_group, _version, _plural, labels={JOB_LABEL: kopf.PRESENT})(mirror_child)


@kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def pods_changed(body: dict[str, Any], memo: kopf.Memo, finetunejobs: kopf.Index, **_: Any) -> None:
    """Restarts, why pods are stuck, and the trainer's final summary, across the job's pods."""
    parent = _parent(body, finetunejobs)
    if parent is None:
        return
    key, seen, metric = parent
    pods = memo.kube.job_pods(key.namespace, key.name)
    _apply(memo, key, seen, st.from_pods(pods, explain_pending(pods), metric), source="pods")


def is_rank0_running(labels: dict[str, str], status: dict[str, Any], **_: Any) -> bool:
    return status.get("phase") == "Running" and any(
        str(labels.get(label, "")).lower() == value for label, value in RANK0_LABELS
    )


@kopf.daemon("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, when=is_rank0_running,
             cancellation_timeout=1.0)
def follow_progress(body: dict[str, Any], memo: kopf.Memo, finetunejobs: kopf.Index,
                    stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Stream rank 0's log and publish each `graft-progress {json}` line (one per epoch)."""
    parent = _parent(body, finetunejobs)
    if parent is None:
        return
    key, seen, metric = parent
    meta = body["metadata"]
    container = (body.get("spec") or {}).get("containers", [{}])[0].get("name")
    for line in memo.kube.follow_log(meta["namespace"], meta["name"], container):
        if stopped:
            break
        report = st.parse_progress_line(line)
        if report:
            _apply(memo, key, seen, st.from_progress(report, metric), source="trainer")


def _parent(body: dict[str, Any], index: kopf.Index) -> tuple[JobKey, dict[str, Any], str] | None:
    """The FineTuneJob a child or pod belongs to (by its graft.dev/job label), if it exists:
    its key, the status the watch last showed, and the metric bestMetric tracks."""
    namespace = body["metadata"]["namespace"]
    name = (body["metadata"].get("labels") or {}).get(JOB_LABEL)
    entry = next(iter(index.get((namespace, name), [])), None)
    if entry is None:
        return None
    return JobKey(namespace, name, entry["uid"]), entry["status"], entry["metric"]


def _apply(memo: kopf.Memo, key: JobKey, seen: dict[str, Any], update: dict[str, Any], source: str) -> None:
    transition = memo.book.apply(key, seen, update)
    if transition is not None:
        _announce(memo.kube, key, transition, update.get("message") or f"reported by {source}")


def _report(memo: kopf.Memo, body: dict[str, Any], patch: dict[str, Any], key: JobKey,
            current: dict[str, Any], update: dict[str, Any], reason: str, message: str,
            event_type: str = "Warning") -> None:
    """Status (via kopf's patch) and the event saying why, so `kubectl describe` shows both."""
    memo.book.apply(key, current, update, patch)
    memo.kube.event(body, event_type, reason, message)


def _announce(kube: Kube, key: JobKey, transition: Transition, message: str) -> None:
    body = {"apiVersion": FINETUNEJOB_KIND.api_version, "kind": FINETUNEJOB_KIND.kind,
            "metadata": {"name": key.name, "namespace": key.namespace, "uid": key.uid}}
    event_type = "Warning" if transition.new_phase == "Failed" else "Normal"
    kube.event(body, event_type, transition.new_phase or "Unknown",
               f"phase {transition.old_phase or 'none'} -> {transition.new_phase}: {message}")
