"""kopf handlers: thin glue from watch events to the pure decisions in reconcile/status/why.

Every handler is a plain function of the kwargs kopf passes (body, memo, index…), so tests call
them directly with real dicts. `memo.kube` is the API (kube.Kube), `memo.book` the status
writer (book.StatusBook); both are set up at startup. The FineTuneJob handlers return how they
ended (a `graft_reconcile_total` result) to `metrics.reconciler`, which counts and times them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3
from kubernetes.client.rest import ApiException

import kopf

from graft.backends import kubernetes_retry as retry
from graft.operator import metrics
from graft.operator import status as st
from graft.operator.book import JobKey, StatusBook, Transition
from graft.operator.kube import CHILD_RESOURCES, FINETUNEJOB, ChildConflict, ChildRefused, Kube
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
# kopf's watches: the server ends each after WATCH_SERVER_TIMEOUT_S and kopf reopens it; a
# watch that hears nothing for WATCH_CLIENT_TIMEOUT_S (a stalled or vanished server) is
# dropped and reopened rather than waited on for ever.
WATCH_SERVER_TIMEOUT_S, WATCH_CLIENT_TIMEOUT_S, WATCH_CONNECT_TIMEOUT_S = 120, 150, 10
HANDLER_WORKERS = 16
# Rank-0 log follows run in their own pool, never in the handlers' executor: however many
# jobs are running, reconciles of new jobs still get a worker. Follows beyond the pool's size
# wait their turn (their jobs' epoch progress shows late; nothing else does).
LOG_FOLLOWERS = ThreadPoolExecutor(max_workers=int(os.environ.get("GRAFT_OPERATOR_LOG_FOLLOWERS", "256")),
                                   thread_name_prefix="graft-log-follow")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping in our own annotations and out of status; post only the
    framework's warnings (handler failures), as our handlers post their own events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = HANDLER_WORKERS
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_S
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_S
    settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT_S
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = WATCH_CONNECT_TIMEOUT_S
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
def create_children(body: dict[str, Any], memo: kopf.Memo, **_: Any) -> str:
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
        _report(memo, body, key, current, {
            "phase": "Failed",
            "message": "invalid FineTuneJob: " + "; ".join(problems),
            "conditions": [st.condition(st.VALID, False, "InvalidSpec", "; ".join(problems))],
        }, "InvalidSpec", str(exc))
        return "invalid"
    # The phase is booked before the children exist: their first watch event can be handled
    # before this handler ends, and must find no phase change to announce ahead of "Created".
    # It is written with the "Created" status below (one write, less churn for kopf's watch).
    memo.book.apply(key, current, {
        "phase": current.get("phase") or ("Suspended" if job.spec.suspend else "Pending"),
        "conditions": [st.condition(st.VALID, True, "SpecValid", "the spec passed validation")],
    }, write=False)
    try:
        created = [memo.kube.create_or_verify(obj, body) for obj in objects]
    except (ChildConflict, ChildRefused) as exc:
        reason = "NameTaken" if isinstance(exc, ChildConflict) else "ChildRefused"
        _report(memo, body, key, current, {
            "phase": "Failed", "message": str(exc),
            "conditions": [st.condition(st.CHILD_CREATED, False, reason, str(exc))],
        }, reason, str(exc))
        return "rejected"
    for obj, was_created in zip(objects, created):
        if was_created:
            metrics.CHILDREN_CREATED.labels(obj["kind"]).inc()
    child = objects[-1]
    names = " and ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects)
    message = f"created {names}" if all(created) else f"{names} already exist and belong to this job"
    _report(memo, body, key, current, {
        "child": {"apiVersion": child["apiVersion"], "kind": child["kind"], "name": child["metadata"]["name"]},
        "conditions": [st.condition(st.CHILD_CREATED, True, "Created", message)],
    }, "Created" if any(created) else "ChildExists", message, event_type="Normal")
    return "created" if any(created) else "exists"


@kopf.on.update(*FINETUNEJOB, field="spec")
@metrics.reconciler
def spec_changed(old: Any, new: Any, body: dict[str, Any], memo: kopf.Memo, **_: Any) -> str:
    """A running job keeps the spec it started with; only spec.suspend reaches the child."""
    meta, current = body["metadata"], dict(body.get("status") or {})
    child = current.get("child")
    if not child:  # never started (e.g. the spec was invalid): the new spec gets a fresh try
        # the unwrapped handler: this reconcile is counted once, as spec_changed's
        return create_children.__wrapped__(body=body, memo=memo)
    key = JobKey(meta["namespace"], meta["name"], meta["uid"])
    paths = changed_spec_paths(old, new)
    rejected = [f"spec.{p}" for p in paths if p != "suspend"]
    if rejected:
        message = (
            f"changes to {', '.join(rejected)} were not applied: {child['kind']} {child['name']} "
            "keeps running with the spec it was created from; only spec.suspend can change. "
            "Delete and re-create the FineTuneJob to run with the new spec."
        )
        _report(memo, body, key, current, {
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
        key, seen, metric = parent
        update = st.from_child(body)
        if update.get("phase") in TERMINAL:
            # The trainer's final summary lands with the phase, so whoever waits for the phase
            # reads the final metrics at once (the pod event carrying it may come later).
            update = {**st.from_summaries(memo.kube.job_pods(key.namespace, key.name), metric), **update}
        _apply(memo, key, seen, update, source=f"{body['kind']} {body['metadata']['name']}")


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
async def follow_progress(body: dict[str, Any], memo: kopf.Memo, finetunejobs: kopf.Index, **_: Any) -> None:
    """Stream rank 0's log and publish each `graft-progress {json}` line (one per epoch). An
    async daemon whose blocking reads run in LOG_FOLLOWERS, so it holds no handler worker;
    cancelled (the pod stopped running or went away), it tells its reader to stop."""
    parent = _parent(body, finetunejobs)
    if parent is None:
        return
    meta = body["metadata"]
    container = (body.get("spec") or {}).get("containers", [{}])[0].get("name")
    halt = threading.Event()
    try:
        await asyncio.get_running_loop().run_in_executor(
            LOG_FOLLOWERS, follow_log_progress, memo, parent, meta["namespace"], meta["name"], container, halt)
    finally:
        halt.set()


def follow_log_progress(memo: kopf.Memo, parent: tuple[JobKey, dict[str, Any], str], namespace: str, pod: str,
                        container: str | None, halt: threading.Event) -> None:
    """Follow one pod's log until the pod ends, through each run of a container restarted in
    place, reopening after a drop, a read timeout or an API server restart (capped exponential
    backoff with jitter), and skipping the lines of a run already read so no progress is
    published twice or out of order."""
    key, seen, metric = parent
    outage = retry.Outage(f"following the log of pod {namespace}/{pod}", memo.kube.server, float("inf"), stop=halt)
    read, following = 0, None
    while not halt.is_set():
        try:
            live = memo.kube.pod(namespace, pod)
            if live is None or (live.get("status") or {}).get("phase") in TERMINAL:
                return
            run = _running_run(live, container)
            if run is None:  # between two runs of a container restarted in place
                outage.failed(ConnectionError("the container is restarting"))
                continue
            if run != following:  # a new run writes a new log, read from its first line
                read, following = 0, run
            for index, line in enumerate(memo.kube.follow_log(namespace, pod, container)):
                outage.answered()
                if halt.is_set():
                    return
                if index < read:
                    continue
                read = index + 1
                report = st.parse_progress_line(line)
                if report:
                    _apply(memo, key, seen, st.from_progress(report, metric), source="trainer")
            # The stream ended: the server closed it early, or the container exited; a pod
            # still Running restarts it in place (restartPolicy OnFailure), and that log is
            # followed too, after the backoff.
            outage.failed(ConnectionError("the log stream ended while the pod runs"))
        except ApiException as exc:
            if exc.status == 404:
                return  # the pod is gone
            if not retry.transient(exc) and exc.status != 400:
                raise
            outage.failed(exc)
        except (urllib3.exceptions.HTTPError, ConnectionError, retry.ApiUnavailable) as exc:
            outage.failed(exc)


def _running_run(pod: dict[str, Any], container: str | None) -> tuple[int, str] | None:
    """Which run of the container is running (its restart count and start time), None when
    none is. A run that ends between this read and opening its log can only make the next
    run's lines be read twice (merging the same progress again changes nothing), never skipped."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        running = (status.get("state") or {}).get("running")
        if status.get("name") == container and running is not None:
            return status.get("restartCount") or 0, str(running.get("startedAt"))
    return None


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


def _report(memo: kopf.Memo, body: dict[str, Any], key: JobKey, current: dict[str, Any],
            update: dict[str, Any], reason: str, message: str, event_type: str = "Warning") -> None:
    """Status and the event saying why, so `kubectl describe` shows both. The event goes first:
    whoever sees the status (a user, `graft status`, a test) then finds the event beside it."""
    memo.kube.event(body, event_type, reason, message)
    memo.book.apply(key, current, update)


def _announce(kube: Kube, key: JobKey, transition: Transition, message: str) -> None:
    body = {"apiVersion": FINETUNEJOB_KIND.api_version, "kind": FINETUNEJOB_KIND.kind,
            "metadata": {"name": key.name, "namespace": key.namespace, "uid": key.uid}}
    event_type = "Warning" if transition.new_phase == "Failed" else "Normal"
    kube.event(body, event_type, transition.new_phase or "Unknown",
               f"phase {transition.old_phase or 'none'} -> {transition.new_phase}: {message}")
