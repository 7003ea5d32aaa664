"""Kubernetes backend. Where the cluster serves the FineTuneJob CRD, a job is submitted as a
FineTuneJob and Graft's operator is the only creator of its children (ConfigMap `<name>-spec`,
PyTorchJob | TrainJob | RayJob), so jobs from the SDK and from `kubectl apply` are the same
object with the same status and Events. Where it does not (a cluster with only Kubeflow or
KubeRay), or when asked (`direct=True`, `graft submit --direct`), the children are created
directly. Every verb reads whichever object the job is, the FineTuneJob first.

`wait` and `logs(follow=True)` are driven by WATCH streams (list once, watch from its
resourceVersion, reconnect when a stream ends, relist on 410 Gone), never by polling.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from graft.backends.base import JobExists, JobNotFound, WaitTimeout
from graft.jobstatus import explain_pending, from_child, suspend_patch, termination_summary
from graft.render import render
from graft.spec import FineTuneJob
from graft.spec.contracts import (CHILD_KINDS, FINETUNEJOB, JOB_LABEL, SPEC_KEY, ResourceKind, backend_of,
                                  spec_configmap_name)
from graft.types import TERMINAL_PHASES, JobRef, JobStatus, Phase

WATCH_SERVER_TIMEOUT_S = 300  # the server ends each watch after this; we reconnect
STOP_CHECK_S = 5.0
DIRECT_NOTE = ("the cluster does not serve FineTuneJobs (Graft's CRD is not installed), so the {kind} was "
               "created directly: no operator status, Events or `kubectl get ftj` for it; install Graft's "
               "chart to get them, or pass --direct to choose this path on purpose")


class KubernetesBackend:
    """Talks to the cluster of the current kubeconfig context (or in-cluster config)."""

    def __init__(
        self,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        api_client: client.ApiClient | None = None,
        direct: bool | None = None,
    ):
        """`direct`: None submits a FineTuneJob where the cluster serves the CRD (else the
        child, with a note); True always creates the child; False insists on a FineTuneJob."""
        if api_client is None:
            # Read KUBECONFIG now: the client library reads it once, when it is first imported.
            kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")
            try:
                api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
                _, active = config.list_kube_config_contexts(config_file=kubeconfig)
                namespace = namespace or active.get("context", {}).get("namespace")
            except config.ConfigException as no_kubeconfig:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    raise RuntimeError(
                        f"no cluster to talk to: {no_kubeconfig}; set KUBECONFIG or pass --context"
                    ) from None
                api_client = client.ApiClient()
        self.api = api_client
        self.namespace = namespace or "default"
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.direct = direct
        self._served: bool | None = None
        self._resources: dict[str, ResourceKind] = {}

    # -- submit ---------------------------------------------------------------------------
    def submit(self, job: FineTuneJob) -> JobRef:
        """Render (pure, may raise) before the first API call, so bad input creates nothing
        whichever path the job takes."""
        namespace = job.metadata.namespace or self.namespace
        configmap, child = render(job, job.spec.backend)
        if self.direct is not True and self._finetunejobs_served():
            return self._submit_finetunejob(job, namespace)
        if self.direct is False:
            raise RuntimeError("the cluster does not serve FineTuneJobs: install Graft's chart (CRD and "
                               "operator), or submit the child job directly with --direct")
        ref = self._submit_direct(job, namespace, configmap, child)
        if self.direct is None:
            ref.note = DIRECT_NOTE.format(kind=ref.kind)
        return ref

    def _finetunejobs_served(self) -> bool:
        """Whether the API server serves the FineTuneJob CRD (API discovery, asked once)."""
        if self._served is None:
            path = f"/apis/{FINETUNEJOB.group}/{FINETUNEJOB.version}"
            try:
                found = self.api.call_api(path, "GET", response_type="object", auth_settings=["BearerToken"],
                                          _return_http_data_only=True)
                self._served = any(r.get("name") == FINETUNEJOB.plural for r in (found or {}).get("resources", []))
            except ApiException as exc:
                if exc.status != 404:
                    raise _api_error(exc, f"API group {FINETUNEJOB.group}") from None
                self._served = False
        return self._served

    def _submit_finetunejob(self, job: FineTuneJob, namespace: str) -> JobRef:
        document = job.to_document()
        document["metadata"]["namespace"] = namespace
        group, version, plural, kind = FINETUNEJOB
        try:
            self.custom.create_namespaced_custom_object(group, version, namespace, plural, document)
        except ApiException as exc:
            raise _api_error(exc, f"{kind} {job.metadata.name}") from None
        self._resources[job.metadata.name] = FINETUNEJOB
        return JobRef(name=job.metadata.name, backend="kubernetes", namespace=namespace, kind=kind)

    def _submit_direct(self, job: FineTuneJob, namespace: str, configmap: dict, child: dict) -> JobRef:
        """ConfigMap, then child; if the child is refused, the ConfigMap is removed again."""
        for obj in (configmap, child):
            obj["metadata"]["namespace"] = namespace
        group, version, plural, kind = CHILD_KINDS[job.spec.backend]
        try:
            self.core.create_namespaced_config_map(namespace, configmap)
        except ApiException as exc:
            raise _api_error(exc, f"ConfigMap {configmap['metadata']['name']}") from None
        try:
            self.custom.create_namespaced_custom_object(group, version, namespace, plural, child)
        except ApiException as exc:
            self.core.delete_namespaced_config_map(configmap["metadata"]["name"], namespace)
            raise _api_error(exc, f"{kind} {job.metadata.name}") from None
        self._resources[job.metadata.name] = CHILD_KINDS[job.spec.backend]
        return JobRef(name=job.metadata.name, backend="kubernetes", namespace=namespace, kind=kind)

    # -- reading --------------------------------------------------------------------------
    def _resource(self, name: str) -> ResourceKind:
        """What the job is: its FineTuneJob when one exists, else the child Graft created
        directly (its kind read from the spec stored beside it)."""
        if name not in self._resources:
            if self._finetunejobs_served() and self._read(FINETUNEJOB, name, missing_ok=True):
                self._resources[name] = FINETUNEJOB
            else:
                try:
                    cm = self.core.read_namespaced_config_map(spec_configmap_name(name), self.namespace)
                except ApiException as exc:
                    raise _api_error(exc, f"job {name}") from None
                document = yaml.safe_load((cm.data or {}).get(SPEC_KEY) or "{}") or {}
                self._resources[name] = CHILD_KINDS[(document.get("spec") or {}).get("backend", "pytorchjob")]
        return self._resources[name]

    def _read(self, resource: ResourceKind, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        group, version, plural, kind = resource
        try:
            return self.custom.get_namespaced_custom_object(group, version, self.namespace, plural, name)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise _api_error(exc, f"{kind} {name}") from None

    def _job(self, name: str) -> dict[str, Any]:
        return self._read(self._resource(name), name)

    def get(self, name: str) -> JobStatus:
        return _status(self._job(name), metrics=self._final_summary(name))

    def _final_summary(self, name: str) -> dict[str, Any]:
        """The trainer's final summary from pod status (its /dev/termination-log), {} until
        one exists. Only rank 0 writes it, so the pod holding one is rank 0's: the Master, or
        whichever Worker got rank 0 in an elastic job that has no Master."""
        for pod in self._pods(name):
            summary = termination_summary(pod)
            if summary is not None:
                return summary
        return {}

    def list(self) -> list[JobStatus]:
        """FineTuneJobs, and the children Graft created directly (those a FineTuneJob owns
        are listed through it)."""
        found = []
        if self._finetunejobs_served():
            group, version, plural, _ = FINETUNEJOB
            listing = self.custom.list_namespaced_custom_object(group, version, self.namespace, plural)
            found += [_status(obj) for obj in listing.get("items", [])]
        for group, version, plural, _ in CHILD_KINDS.values():
            try:
                listing = self.custom.list_namespaced_custom_object(
                    group, version, self.namespace, plural, label_selector=JOB_LABEL
                )
            except ApiException as exc:
                if exc.status == 404:  # that operator's CRD is not installed
                    continue
                raise
            found += [_status(obj) for obj in listing.get("items", []) if _labelled(obj) and not _owned(obj)]
        return sorted(found, key=lambda s: s.name)

    def wait(
        self, name: str, until: tuple[Phase, ...] = TERMINAL_PHASES, timeout: float | None = None
    ) -> JobStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        group, version, plural, kind = self._resource(name)
        events = self._watch(
            self.custom.list_namespaced_custom_object, group, version, self.namespace, plural,
            field_selector=f"metadata.name={name}", deadline=deadline,
        )
        try:
            for event, objects in events:
                mine = [o for o in objects if o["metadata"]["name"] == name]
                if event == "DELETED" and mine:
                    raise JobNotFound(f"{kind} {name} was deleted while waiting")
                if event == "LIST" and not mine:
                    raise JobNotFound(f"{kind} {name} not found in namespace {self.namespace}")
                for obj in mine:
                    status = _status(obj)
                    if status.phase in until:
                        return status
        except WaitTimeout:
            raise WaitTimeout(f"{kind} {name} did not reach {' or '.join(until)} within {timeout}s") from None
        raise AssertionError("unreachable: _watch only ends by raising")

    def _watch(
        self, list_call: Callable, *args: Any, deadline: float | None,
        stop: threading.Event | None = None, **kwargs: Any,
    ) -> Iterator[tuple[str, list[dict]]]:
        """("LIST", all objects) once, then (event type, [object]) from a watch; the stream is
        reopened from the last resourceVersion when it ends, and relisted after 410 Gone.
        Raises WaitTimeout at the deadline; returns soon after `stop` is set (a blocked read
        cannot be interrupted, so reads then time out every STOP_CHECK_S to look at it)."""
        while True:
            listing = self.api.sanitize_for_serialization(list_call(*args, **kwargs))
            resource_version = listing.get("metadata", {}).get("resourceVersion")
            yield "LIST", listing.get("items") or []
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if stop is not None:
                    if stop.is_set():
                        return
                    remaining = STOP_CHECK_S
                elif remaining is not None and remaining <= 0:
                    raise WaitTimeout("timed out")
                try:
                    stream = watch.Watch().stream(
                        list_call, *args, **kwargs, resource_version=resource_version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=int(min(remaining or WATCH_SERVER_TIMEOUT_S, WATCH_SERVER_TIMEOUT_S)) + 1,
                        _request_timeout=(10, remaining) if remaining else None,
                    )
                    for event in stream:
                        obj = event["raw_object"]
                        resource_version = obj.get("metadata", {}).get("resourceVersion") or resource_version
                        if event["type"] != "BOOKMARK":
                            yield event["type"], [obj]
                except ApiException as exc:
                    if exc.status == 410:  # our resourceVersion is too old: list again
                        break
                    raise
                except urllib3.exceptions.HTTPError:
                    continue  # read timeout or dropped connection: the deadline check decides

    def _pods(self, name: str) -> list[dict]:
        listing = self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_LABEL}={name}")
        pods = self.api.sanitize_for_serialization(listing)["items"]
        return sorted((p for p in pods if _labelled(p, name)), key=lambda p: p["metadata"]["name"])

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        """Every pod's log, each line prefixed `[<pod>]`; with follow, pods that start later
        join the stream, and it ends once the job has finished and every stream is drained."""
        self._job(name)  # raises JobNotFound
        if not follow:
            for pod in self._pods(name):
                pod_name = pod["metadata"]["name"]
                if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
                    text = self.core.read_namespaced_pod_log(pod_name, self.namespace)
                    for line in text.splitlines():
                        yield f"[{pod_name}] {line}"
            return
        yield from _LogFollower(self, name).lines()

    def events(self, name: str) -> list[str]:
        """Events of the job, its spec ConfigMap and its pods, oldest first."""
        return [_event_line(e) for e in self._event_dicts(name)]

    def _event_dicts(self, name: str) -> list[dict]:
        listing = self.api.sanitize_for_serialization(self.core.list_namespaced_event(self.namespace))
        mine = [e for e in listing.get("items", []) if _concerns(e, name)]
        return sorted(mine, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    # -- changing -------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """A FineTuneJob's children go by garbage collection (they are owned by it); a direct
        job's ConfigMap is deleted here."""
        resource = self._resource(name)
        group, version, plural, kind = resource
        try:
            self.custom.delete_namespaced_custom_object(
                group, version, self.namespace, plural, name, propagation_policy="Background"
            )
        except ApiException as exc:
            raise _api_error(exc, f"{kind} {name}") from None
        if resource != FINETUNEJOB:
            try:
                self.core.delete_namespaced_config_map(spec_configmap_name(name), self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        self._resources.pop(name, None)

    def _patch_suspend(self, name: str, suspend: bool) -> None:
        """spec.suspend of a FineTuneJob (the operator carries it to the child), or the
        child's own suspend field."""
        resource = self._resource(name)
        group, version, plural, kind = resource
        patch = ({"spec": {"suspend": suspend}} if resource == FINETUNEJOB
                 else suspend_patch(backend_of(kind), suspend))
        try:
            self.custom.patch_namespaced_custom_object(group, version, self.namespace, plural, name, patch)
        except ApiException as exc:
            raise _api_error(exc, f"{kind} {name}") from None

    def suspend(self, name: str) -> None:
        self._patch_suspend(name, True)

    def resume(self, name: str) -> None:
        self._patch_suspend(name, False)

    def why(self, name: str) -> str:
        status = self.get(name)
        kind = self._resource(name).kind
        subject = f"{kind} {self.namespace}/{name}"
        if status.phase == "Succeeded":
            return f"{subject} succeeded; nothing is wrong."
        if status.phase == "Suspended":
            return f"{subject} is suspended, so no pods run; `graft resume {name}` starts it again."
        pods, events = self._pods(name), self._event_dicts(name)
        stuck = explain_pending(pods, events)
        job_warnings = [
            f"{e.get('reason')}: {(e.get('message') or '').strip()}"
            for e in events
            if e.get("type") == "Warning" and (e.get("involvedObject") or {}).get("name") == name
        ]
        parts = [f"{subject} is {status.phase}" + (f" ({status.message})" if status.message else "") + "."]
        if status.phase == "Failed":
            parts += [_pod_failure(p) for p in pods if _pod_failure(p)]
        if stuck:
            parts.append(f"Its pods cannot start: {stuck}.")
        if job_warnings:
            parts.append("The job reports: " + "; ".join(job_warnings) + ".")
            if any("exceeded quota" in w for w in job_warnings):
                parts.append("A ResourceQuota in the namespace refuses the pods: lower "
                             "spec.resources (cpu, memory, gpusPerNode) or raise the quota.")
        if status.phase == "Pending" and not pods and not job_warnings:
            parts.append("No pods exist yet and nothing reported a problem: check that Graft's operator and "
                         "the training operator are installed and running." if kind == FINETUNEJOB.kind else
                         f"No pods exist yet and nothing reported a problem: check that the "
                         f"{kind} operator is installed and running.")
        if status.phase == "Running" and not stuck:
            running = sum((p.get("status") or {}).get("phase") == "Running" for p in pods)
            parts.append(f"{running} of {len(pods)} pods are running.")
        return " ".join(parts)


class _LogFollower:
    """Merges the follow-streams of a job's pods: a pod watch starts a reader per pod once its
    container has started, and a job watch says when no more pods will come."""

    def __init__(self, backend: KubernetesBackend, name: str):
        self.backend, self.name = backend, name
        self.lines_q: queue.Queue[str | None] = queue.Queue()
        self.started: set[str] = set()
        self.readers: list[threading.Thread] = []
        self.job_done = threading.Event()
        self.lock = threading.Lock()

    def lines(self) -> Iterator[str]:
        for target in (self._watch_pods, self._watch_job):
            threading.Thread(target=target, daemon=True).start()
        while True:
            try:
                line = self.lines_q.get(timeout=0.5)
            except queue.Empty:
                line = None
            if line is not None:
                yield line
            elif self.job_done.is_set() and self._readers_done():
                while not self.lines_q.empty():
                    queued = self.lines_q.get()
                    if queued is not None:
                        yield queued
                return

    def _readers_done(self) -> bool:
        with self.lock:
            return all(not r.is_alive() for r in self.readers)

    def _watch_pods(self) -> None:
        b = self.backend
        for _, pods in b._watch(b.core.list_namespaced_pod, b.namespace, deadline=None,
                                stop=self.job_done, label_selector=f"{JOB_LABEL}={self.name}"):
            for pod in pods:
                pod_name = pod["metadata"]["name"]
                phase = (pod.get("status") or {}).get("phase")
                if _labelled(pod, self.name) and phase in ("Running", "Succeeded", "Failed"):
                    self._start_reader(pod_name)

    def _start_reader(self, pod_name: str) -> None:
        with self.lock:
            if pod_name in self.started:
                return
            self.started.add(pod_name)
            reader = threading.Thread(target=self._read, args=(pod_name,), daemon=True)
            self.readers.append(reader)
            reader.start()

    def _read(self, pod_name: str) -> None:
        b = self.backend
        try:
            for line in watch.Watch().stream(b.core.read_namespaced_pod_log, pod_name, b.namespace):
                self.lines_q.put(f"[{pod_name}] {line}")
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            self.lines_q.put(f"[{pod_name}] (log stream ended: {exc})")

    def _watch_job(self) -> None:
        try:
            self.backend.wait(self.name)
        finally:
            self.job_done.set()
            self.lines_q.put(None)  # wake the consumer


def _status(job: dict[str, Any], metrics: dict[str, Any] | None = None) -> JobStatus:
    """One status model for both paths: a FineTuneJob's status as the operator wrote it, or a
    direct child's mapped the way the operator maps it."""
    if job.get("kind") == FINETUNEJOB.kind:
        mapped = {"phase": "Pending", **(job.get("status") or {})}
    else:
        mapped = from_child(job)
    true_conditions = [c for c in mapped.get("conditions") or [] if c.get("status") == "True"]
    latest = true_conditions[-1].get("message", "") if true_conditions else ""
    return JobStatus(
        name=job["metadata"]["name"],
        phase=mapped["phase"],
        message=mapped.get("message") or latest,
        start_time=mapped.get("startTime"),
        completion_time=mapped.get("completionTime"),
        metrics=metrics or {},
    )


def _owned(obj: dict) -> bool:
    """Whether a FineTuneJob owns this child (then the FineTuneJob stands for the job)."""
    return any(ref.get("kind") == FINETUNEJOB.kind for ref in obj["metadata"].get("ownerReferences") or [])


def _labelled(obj: dict, name: str | None = None) -> bool:
    """Selectors are applied by the API server; checked again here so a server (or emulator)
    that ignores them cannot mix other jobs' objects in."""
    value = (obj.get("metadata", {}).get("labels") or {}).get(JOB_LABEL)
    return value is not None and (name is None or value == name)


def _concerns(event: dict, name: str) -> bool:
    involved = (event.get("involvedObject") or {}).get("name") or ""
    return involved == name or involved.startswith(f"{name}-")


def _event_line(event: dict) -> str:
    involved = event.get("involvedObject") or {}
    when = event.get("lastTimestamp") or event.get("eventTime") or ""
    return (f"{when} {event.get('type', '')} {event.get('reason', '')} "
            f"{involved.get('kind', '').lower()}/{involved.get('name', '')}: "
            f"{(event.get('message') or '').strip()}").strip()


def _pod_failure(pod: dict) -> str:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode"):
            reason = terminated.get("reason") or "Error"
            return (f"Pod {pod['metadata']['name']} exited with code {terminated['exitCode']} "
                    f"({reason}); `graft logs {pod['metadata'].get('labels', {}).get(JOB_LABEL, '')}` "
                    f"shows why.")
    return ""


def _api_error(exc: ApiException, what: str) -> Exception:
    if exc.status == 404:
        return JobNotFound(f"{what} not found")
    if exc.status == 409:
        return JobExists(f"{what} already exists; delete it first or pick another metadata.name")
    try:  # the server's own sentence (it names the field), not the raw Status JSON
        message = json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = f"{exc.status} {exc.reason}"
    return RuntimeError(f"the API server refused {what}: {message}")
