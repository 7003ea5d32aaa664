"""Kubernetes backend. Where the cluster serves the FineTuneJob CRD, a job is submitted as a
FineTuneJob and Graft's operator is the only creator of its children (ConfigMap `<name>-spec`,
PyTorchJob | TrainJob | RayJob), so jobs from the SDK and from `kubectl apply` are the same
object with the same status and Events. Where it does not (a cluster with only Kubeflow or
KubeRay), or when asked (`direct=True`, `graft submit --direct`), the children are created
directly. Every verb reads whichever object the job is, the FineTuneJob first.

`wait` and `logs(follow=True)` are driven by WATCH streams (list once, watch from its
resourceVersion, reconnect when a stream ends, relist on 410 Gone), never by polling. Every
request lives through an API server restart: transient failures (refused or dropped
connections, timeouts, 429/5xx) are retried with capped exponential backoff and jitter until
the outage budget (`outage_budget`, GRAFT_API_OUTAGE_BUDGET_S, default 120 s) is spent, then
end in one line naming the object and the cause (kubernetes_retry). Every other refusal is
one of the documented errors: 404 JobNotFound (exit 3), 422 SpecError (exit 2), the rest a
RuntimeError with the server's own sentence (exit 1).
"""

from __future__ import annotations

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

from graft.backends import kubernetes_retry as retry
from graft.backends.base import JobExists, JobNotFound, WaitTimeout
from graft.backends.kubernetes_retry import ApiUnavailable
from graft.jobstatus import explain_pending, from_child, suspend_patch, termination_summary
from graft.render import render
from graft.spec import FineTuneJob, SpecError
from graft.spec.contracts import (CHILD_KINDS, FINETUNEJOB, JOB_LABEL, SPEC_KEY, ResourceKind, backend_of,
                                  spec_configmap_name)
from graft.types import TERMINAL_PHASES, JobRef, JobStatus, Phase

WATCH_SERVER_TIMEOUT_S = 300  # the server ends each watch after this; we reconnect
WATCH_READ_SLACK_S = 15  # a watch read that hears nothing this long after the server's timeout is dead
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
        outage_budget: float | None = None,
    ):
        """`direct`: None submits a FineTuneJob where the cluster serves the CRD (else the
        child, with a note); True always creates the child; False insists on a FineTuneJob.
        `outage_budget`: seconds the API server may be unreachable before a call gives up."""
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
        self.server = api_client.configuration.host
        self.budget = retry.outage_budget(outage_budget)
        self.namespace = namespace or "default"
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.direct = direct
        self._served: bool | None = None
        self._resources: dict[str, ResourceKind] = {}

    def _call(self, what: str, fn: Callable, *args: Any, retry_transient: bool = True, **kwargs: Any) -> Any:
        """One request: retried through an outage (reads and idempotent writes), every refusal
        mapped to one of the documented errors naming `what`."""
        try:
            if retry_transient:
                return retry.call(f"reading {what}", self.server, self.budget, fn, *args, **kwargs)
            return fn(*args, **kwargs)
        except ApiException as exc:
            if retry.transient(exc) and not retry_transient:
                raise retry.unavailable(f"writing {what}", self.server, 0, exc) from None
            raise _api_error(exc, what) from None
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise retry.unavailable(f"writing {what}", self.server, 0, exc) from None

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
                found = self._call(f"API group {FINETUNEJOB.group}", self.api.call_api, path, "GET",
                                   response_type="object", auth_settings=["BearerToken"],
                                   _return_http_data_only=True)
                self._served = any(r.get("name") == FINETUNEJOB.plural for r in (found or {}).get("resources", []))
            except JobNotFound:
                self._served = False
        return self._served

    def _submit_finetunejob(self, job: FineTuneJob, namespace: str) -> JobRef:
        document = job.to_document()
        document["metadata"]["namespace"] = namespace
        group, version, plural, kind = FINETUNEJOB
        self._call(f"{kind} {namespace}/{job.metadata.name}", self.custom.create_namespaced_custom_object,
                   group, version, namespace, plural, document, retry_transient=False)
        self._resources[job.metadata.name] = FINETUNEJOB
        return JobRef(name=job.metadata.name, backend="kubernetes", namespace=namespace, kind=kind)

    def _submit_direct(self, job: FineTuneJob, namespace: str, configmap: dict, child: dict) -> JobRef:
        """ConfigMap, then child; if the child is refused, the ConfigMap is removed again."""
        for obj in (configmap, child):
            obj["metadata"]["namespace"] = namespace
        group, version, plural, kind = CHILD_KINDS[job.spec.backend]
        self._call(f"ConfigMap {namespace}/{configmap['metadata']['name']}", self.core.create_namespaced_config_map,
                   namespace, configmap, retry_transient=False)
        try:
            self._call(f"{kind} {namespace}/{job.metadata.name}", self.custom.create_namespaced_custom_object,
                       group, version, namespace, plural, child, retry_transient=False)
        except Exception:
            self._call(f"ConfigMap {namespace}/{configmap['metadata']['name']}",
                       self.core.delete_namespaced_config_map, configmap["metadata"]["name"], namespace)
            raise
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
                    cm = self._call(f"job {self.namespace}/{name}", self.core.read_namespaced_config_map,
                                    spec_configmap_name(name), self.namespace)
                except JobNotFound:
                    raise JobNotFound(f"job {name} not found in namespace {self.namespace}") from None
                document = yaml.safe_load((cm.data or {}).get(SPEC_KEY) or "{}") or {}
                self._resources[name] = CHILD_KINDS[(document.get("spec") or {}).get("backend", "pytorchjob")]
        return self._resources[name]

    def _read(self, resource: ResourceKind, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        group, version, plural, kind = resource
        try:
            return self._call(f"{kind} {self.namespace}/{name}", self.custom.get_namespaced_custom_object,
                              group, version, self.namespace, plural, name)
        except JobNotFound:
            if missing_ok:
                return None
            raise

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
            listing = self._call(f"FineTuneJobs in {self.namespace}", self.custom.list_namespaced_custom_object,
                                 group, version, self.namespace, plural)
            found += [_status(obj) for obj in listing.get("items", [])]
        for group, version, plural, kind in CHILD_KINDS.values():
            try:
                listing = self._call(f"{kind}s in {self.namespace}", self.custom.list_namespaced_custom_object,
                                     group, version, self.namespace, plural, label_selector=JOB_LABEL)
            except JobNotFound:  # that operator's CRD is not installed
                continue
            found += [_status(obj) for obj in listing.get("items", []) if _labelled(obj) and not _owned(obj)]
        return sorted(found, key=lambda s: s.name)

    def wait(
        self, name: str, until: tuple[Phase, ...] = TERMINAL_PHASES, timeout: float | None = None,
        on_status: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Block until the job reaches a phase in `until`. `on_status` hears each phase the
        job passes through, once each: a relist or a reconnect that shows the same phase
        again is not a new transition."""
        deadline = None if timeout is None else time.monotonic() + timeout
        group, version, plural, kind = self._resource(name)
        events = self._watch(
            self.custom.list_namespaced_custom_object, group, version, self.namespace, plural,
            what=f"{kind} {self.namespace}/{name}", field_selector=f"metadata.name={name}", deadline=deadline,
        )
        last_phase = None
        try:
            for event, objects in events:
                mine = [o for o in objects if o["metadata"]["name"] == name]
                if event == "DELETED" and mine:
                    raise JobNotFound(f"{kind} {self.namespace}/{name} was deleted while waiting")
                if event == "LIST" and not mine:
                    raise JobNotFound(f"{kind} {name} not found in namespace {self.namespace}")
                for obj in mine:
                    status = _status(obj)
                    if status.phase != last_phase:
                        last_phase = status.phase
                        if on_status is not None:
                            on_status(status)
                    if status.phase in until:
                        return status
        except WaitTimeout:
            raise WaitTimeout(f"{kind} {name} did not reach {' or '.join(until)} within {timeout}s") from None
        finally:
            events.close()
        raise AssertionError("unreachable: _watch only ends by raising")

    def _watch(
        self, list_call: Callable, *args: Any, what: str, deadline: float | None,
        stop: threading.Event | None = None, **kwargs: Any,
    ) -> Iterator[tuple[str, list[dict]]]:
        """("LIST", all objects) once, then (event type, [object]) from a watch; the stream is
        reopened from the last resourceVersion when it ends, and relisted after 410 Gone.
        While the API server does not answer (refused, dropped, timed out, 5xx), the list and
        the watch are retried with capped exponential backoff and jitter; ApiUnavailable once
        it has not answered for the outage budget. Raises WaitTimeout at the deadline; returns
        soon after `stop` is set (a blocked read cannot be interrupted, so reads then time out
        every STOP_CHECK_S to look at it)."""
        outage = retry.Outage(f"watching {what}", self.server, self.budget, stop=stop, deadline=deadline)

        def remaining() -> float | None:
            if stop is not None:
                return STOP_CHECK_S
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout("timed out")
            return left

        while True:
            while True:  # the list (again after 410 Gone): retried through an outage too
                if stop is not None and stop.is_set():
                    return
                remaining()
                try:
                    listing = self.api.sanitize_for_serialization(list_call(*args, **kwargs))
                    break
                except ApiException as exc:
                    if not retry.transient(exc):
                        raise _api_error(exc, what) from None
                    outage.failed(exc)
                except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
                    outage.failed(exc)
            outage.answered()
            resource_version = listing.get("metadata", {}).get("resourceVersion")
            yield "LIST", listing.get("items") or []
            while True:
                if stop is not None and stop.is_set():
                    return
                left = remaining()
                server_timeout = int(min(left or WATCH_SERVER_TIMEOUT_S, WATCH_SERVER_TIMEOUT_S)) + 1
                try:
                    stream = watch.Watch().stream(
                        list_call, *args, **kwargs, resource_version=resource_version,
                        allow_watch_bookmarks=True, timeout_seconds=server_timeout,
                        _request_timeout=(10, min(left, server_timeout + WATCH_READ_SLACK_S) if left
                                          else server_timeout + WATCH_READ_SLACK_S),
                    )
                    for event in stream:
                        outage.answered()
                        obj = event["raw_object"]
                        resource_version = obj.get("metadata", {}).get("resourceVersion") or resource_version
                        if event["type"] != "BOOKMARK":
                            yield event["type"], [obj]
                    outage.answered()  # the server ended the watch at its timeout: reopen
                except ApiException as exc:
                    if exc.status == 410:  # our resourceVersion is too old: list again
                        break
                    if not retry.transient(exc):
                        raise _api_error(exc, what) from None
                    outage.failed(exc)
                except urllib3.exceptions.ReadTimeoutError:
                    if stop is None and (deadline is None or time.monotonic() < deadline):
                        outage.failed(TimeoutError("read timed out"))  # a stalled server
                except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
                    outage.failed(exc)  # refused or dropped: back off, then reopen

    def _pods(self, name: str) -> list[dict]:
        listing = self._call(f"pods of job {self.namespace}/{name}", self.core.list_namespaced_pod,
                             self.namespace, label_selector=f"{JOB_LABEL}={name}")
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
                    text = self._call(f"the log of pod {self.namespace}/{pod_name}", self.core.read_namespaced_pod_log,
                                      pod_name, self.namespace)
                    for line in text.splitlines():
                        yield f"[{pod_name}] {line}"
            return
        yield from _LogFollower(self, name).lines()

    def events(self, name: str) -> list[str]:
        """Events of the job, its spec ConfigMap and its pods, oldest first."""
        return [_event_line(e) for e in self._event_dicts(name)]

    def _event_dicts(self, name: str) -> list[dict]:
        listing = self.api.sanitize_for_serialization(
            self._call(f"events in {self.namespace}", self.core.list_namespaced_event, self.namespace))
        mine = [e for e in listing.get("items", []) if _concerns(e, name)]
        return sorted(mine, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    # -- changing -------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """A FineTuneJob's children go by garbage collection (they are owned by it); a direct
        job's ConfigMap is deleted here."""
        resource = self._resource(name)
        group, version, plural, kind = resource
        self._call(f"{kind} {self.namespace}/{name}", self.custom.delete_namespaced_custom_object,
                   group, version, self.namespace, plural, name, propagation_policy="Background")
        if resource != FINETUNEJOB:
            try:
                self._call(f"ConfigMap {self.namespace}/{spec_configmap_name(name)}",
                           self.core.delete_namespaced_config_map, spec_configmap_name(name), self.namespace)
            except JobNotFound:
                pass
        self._resources.pop(name, None)

    def _patch_suspend(self, name: str, suspend: bool) -> None:
        """spec.suspend of a FineTuneJob (the operator carries it to the child), or the
        child's own suspend field."""
        resource = self._resource(name)
        group, version, plural, kind = resource
        patch = ({"spec": {"suspend": suspend}} if resource == FINETUNEJOB
                 else suspend_patch(backend_of(kind), suspend))
        self._call(f"{kind} {self.namespace}/{name}", self.custom.patch_namespaced_custom_object,
                   group, version, self.namespace, plural, name, patch)

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


class _Failure:
    """A watch that could not go on: raised to the consumer instead of ending quietly."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class _LogFollower:
    """Merges the follow-streams of a job's containers, in the order their lines arrive: a pod
    watch keeps the latest state of every pod and starts one reader per container once it has
    started; a job watch says when no more pods will come. A reader reopens its stream after a
    drop and after a container restart (restartCount changes), counting the lines it printed of
    each run so none is printed twice: the kubelet serves the current run from its start (the
    run before with previous=true). A watch that fails is reported, not taken for the end."""

    def __init__(self, backend: KubernetesBackend, name: str):
        self.backend, self.name = backend, name
        self.lines_q: queue.Queue[str | _Failure | None] = queue.Queue()
        self.pods: dict[str, dict] = {}
        self.changed = threading.Condition()
        self.started: set[tuple[str, str]] = set()
        self.readers: list[threading.Thread] = []
        self.job_done = threading.Event()
        self.finished = threading.Event()  # the consumer is gone: everything stops
        self.lock = threading.Lock()

    def lines(self) -> Iterator[str]:
        for target in (self._watch_pods, self._watch_job):
            threading.Thread(target=self._reporting(target), daemon=True).start()
        try:
            while True:
                try:
                    line = self.lines_q.get(timeout=0.5)
                except queue.Empty:
                    line = None
                if isinstance(line, _Failure):
                    raise line.exc
                if line is not None:
                    yield line
                elif self.job_done.is_set() and self._readers_done():
                    while not self.lines_q.empty():
                        queued = self.lines_q.get()
                        if isinstance(queued, _Failure):
                            raise queued.exc
                        if queued is not None:
                            yield queued
                    return
        finally:
            self.finished.set()
            with self.changed:
                self.changed.notify_all()

    def _reporting(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 (handed to the consumer, who raises it)
                if not self.finished.is_set():
                    self.lines_q.put(_Failure(exc))
        return run

    def _readers_done(self) -> bool:
        with self.lock:
            return all(not r.is_alive() for r in self.readers)

    def _watch_pods(self) -> None:
        b = self.backend
        for event, pods in b._watch(b.core.list_namespaced_pod, b.namespace, deadline=None, stop=self.finished,
                                    what=f"the pods of job {b.namespace}/{self.name}",
                                    label_selector=f"{JOB_LABEL}={self.name}"):
            with self.changed:
                for pod in pods:
                    if not _labelled(pod, self.name):
                        continue
                    pod_name = pod["metadata"]["name"]
                    if event == "DELETED":
                        self.pods.pop(pod_name, None)
                    else:
                        self.pods[pod_name] = pod
                self.changed.notify_all()
            for pod in pods:
                if event != "DELETED" and _labelled(pod, self.name) and \
                        (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
                    for container in (pod.get("spec") or {}).get("containers") or []:
                        self._start_reader(pod["metadata"]["name"], container["name"],
                                           len(pod["spec"]["containers"]) > 1)

    def _start_reader(self, pod_name: str, container: str, several: bool) -> None:
        with self.lock:
            if (pod_name, container) in self.started:
                return
            self.started.add((pod_name, container))
            reader = threading.Thread(target=self._reporting(lambda: self._read(pod_name, container, several)),
                                      daemon=True)
            self.readers.append(reader)
            reader.start()

    def _container(self, pod_name: str, container: str) -> tuple[dict | None, dict]:
        """The pod as the watch last showed it (None once deleted) and that container's status."""
        with self.changed:
            pod = self.pods.get(pod_name)
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        return pod, next((c for c in statuses if c.get("name") == container), {})

    def _wait_for_change(self, timeout: float = 2.0) -> None:
        with self.changed:
            self.changed.wait(timeout)

    def _read(self, pod_name: str, container: str, several: bool) -> None:
        b = self.backend
        prefix = f"[{pod_name}/{container}] " if several else f"[{pod_name}] "
        printed: dict[int, int] = {}  # lines printed of each run (restartCount) of the container
        reading: int | None = None  # the run last read
        outage = retry.Outage(f"following the log of pod {b.namespace}/{pod_name}", b.server, b.budget,
                              stop=self.finished)
        while not self.finished.is_set():
            pod, status = self._container(pod_name, container)
            if pod is None:
                return  # deleted: its log went with it
            run = status.get("restartCount") or 0
            state = status.get("state") or {}
            if reading is not None and run > reading:
                # Restarted: what the run before wrote after our stream dropped (if anything).
                self._drain(pod_name, container, prefix, printed, reading, outage)
            if "running" not in state and "terminated" not in state:
                self._wait_for_change()  # waiting to (re)start: nothing to read yet
                continue
            reading = run
            before = printed.get(run, 0)
            try:
                stream = watch.Watch().stream(b.core.read_namespaced_pod_log, pod_name, b.namespace,
                                              container=container, _request_timeout=(10, None))
                for index, line in enumerate(stream):
                    outage.answered()
                    if index >= printed.get(run, 0):
                        self.lines_q.put(prefix + line)
                        printed[run] = index + 1
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status == 400:  # "container ... is waiting to start": the watch will say
                    self._wait_for_change()
                    continue
                if not retry.transient(exc):
                    raise _api_error(exc, f"the log of pod {b.namespace}/{pod_name}") from None
                outage.failed(exc)
                continue
            except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
                outage.failed(exc)  # the stream dropped: reopen it
                continue
            # The stream ended: the container exited (or the connection closed cleanly).
            pod, status = self._container(pod_name, container)
            terminated = (status.get("state") or {}).get("terminated")
            if pod is None:
                return
            if terminated and (status.get("restartCount") or 0) == run and _will_not_restart(pod, terminated):
                return  # that was the last run
            if self.job_done.is_set() and printed.get(run, 0) == before:
                return  # the job is over and nothing more came
            if printed.get(run, 0) == before:
                self._wait_for_change()  # nothing new: let the pod's status catch up first

    def _drain(self, pod_name: str, container: str, prefix: str, printed: dict[int, int], run: int,
               outage: retry.Outage) -> None:
        """The previous run's lines past those printed (previous=true), once per run."""
        b = self.backend
        if printed.get(run, 0) < 0:
            return
        try:
            text = b.core.read_namespaced_pod_log(pod_name, b.namespace, container=container, previous=True,
                                                  _request_timeout=(10, 60))
            outage.answered()
        except (ApiException, urllib3.exceptions.HTTPError, ConnectionError):
            text = ""  # no previous run kept: nothing more to show of it
        for line in text.splitlines()[printed.get(run, 0):]:
            self.lines_q.put(prefix + line)
        printed[run] = -1  # drained

    def _watch_job(self) -> None:
        try:
            self.backend.wait(self.name)
        finally:
            self.job_done.set()
            self.lines_q.put(None)  # wake the consumer


def _will_not_restart(pod: dict, terminated: dict) -> bool:
    policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") or policy == "Never" or (
        policy == "OnFailure" and terminated.get("exitCode") == 0)


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
    """An ApiException as the error the CLI maps to its documented exit code, in one line
    naming the object and the cause: 404 -> JobNotFound (3), 422 -> SpecError (2), a transient
    failure that outlived its retries -> ApiUnavailable (1), anything else RuntimeError (1)."""
    message = retry.server_message(exc)
    if exc.status == 404:
        return JobNotFound(f"{what} not found")
    if exc.status == 409:
        return JobExists(f"{what} already exists; delete it first or pick another metadata.name")
    if exc.status == 422:
        return SpecError([message], source=f"the API server's answer for {what}")
    if exc.status == 401:
        return RuntimeError(f"the API server did not accept our credentials for {what}: {message}; "
                            "refresh the kubeconfig's token or pick another --context")
    if exc.status == 403:
        return RuntimeError(f"not allowed: {message}; ask a cluster admin for the RBAC Graft's users need")
    if retry.transient(exc):
        return ApiUnavailable(f"the API server could not serve {what}: {message}")
    return RuntimeError(f"the API server refused {what}: {message}")
