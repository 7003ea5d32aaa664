"""The operator's few API calls, through the kubernetes client: create-or-verify children,
patch status, list pods, follow a log, post Events. One place, so the RBAC rules in rbac.py
can list exactly these verbs.

Every call has a timeout, and each is retried with capped exponential backoff and jitter while
the API server is unreachable or busy (graft.backends.kubernetes_retry), for up to
API_RETRY_BUDGET_S: an operator rides out an API server restart instead of failing the
handler. Creates are retried too: a create whose answer was lost comes back as 409, and
create_or_verify then finds the object its first attempt made (owned by the same job).
Status patches are also retried on 409 Conflict."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from graft.backends import kubernetes_retry as retry

from graft.operator.reconcile import owned_by
from graft.operator.status import now
from graft.spec import contracts
from graft.spec.contracts import JOB_LABEL

log = logging.getLogger("graft.operator")

# (group, version, plural) of every kind the operator touches besides core ones.
FINETUNEJOB = contracts.FINETUNEJOB[:3]
CHILD_RESOURCES = {child.kind: child[:3] for child in contracts.CHILD_KINDS.values()}
API_RETRY_BUDGET_S = 60.0
REQUEST_TIMEOUT = (10, 30)  # (connect, read) seconds of every request but the log follow
LOG_READ_TIMEOUT_S = 300  # a log follow that hears nothing this long is reopened
CONNECTION_POOL = 512  # log follows each hold a connection; creates must never wait for one


class ChildConflict(RuntimeError):
    """A child's name is taken by an object this FineTuneJob does not own."""


class ChildRefused(RuntimeError):
    """The API server refused a rendered child (its CRD's schema, CEL rules or a webhook):
    retrying the same object cannot succeed, so the job fails saying why."""


class Kube:
    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.server = api.configuration.host

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster service account when there is one, else the current kubeconfig."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = CONNECTION_POOL
        return cls(client.ApiClient(configuration))

    def _call(self, what: str, fn, *args: Any, also: frozenset[int] = frozenset(), **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        return retry.call(what, self.server, API_RETRY_BUDGET_S, fn, *args, also=also, **kwargs)

    def create_or_verify(self, obj: dict[str, Any], owner: dict[str, Any]) -> bool:
        """Create `obj`; on 409 accept the existing one only if `owner` owns it.

        Returns True when created now, False when it already existed (a re-run handler, or a
        restarted operator), so a second child can never appear.
        """
        try:
            self._create(obj)
            return True
        except ApiException as exc:
            if exc.status in (400, 422):
                meta = obj["metadata"]
                raise ChildRefused(f"the API server refused {obj['kind']} {meta['namespace']}/{meta['name']}: "
                                   f"{retry.server_message(exc)}") from None
            if exc.status != 409:
                raise
        existing = self._read(obj)
        if not owned_by(existing, owner):
            meta = obj["metadata"]
            raise ChildConflict(
                f"{obj['kind']} {meta['namespace']}/{meta['name']} already exists and is not "
                f"owned by this FineTuneJob; delete it or rename the FineTuneJob"
            )
        return False

    def _create(self, obj: dict[str, Any]) -> None:
        namespace = obj["metadata"]["namespace"]
        what = f"creating {obj['kind']} {namespace}/{obj['metadata']['name']}"
        if obj["kind"] == "ConfigMap":
            self._call(what, self.core.create_namespaced_config_map, namespace, obj)
        else:
            group, version, plural = CHILD_RESOURCES[obj["kind"]]
            self._call(what, self.custom.create_namespaced_custom_object, group, version, namespace, plural, obj)

    def _read(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        what = f"reading {obj['kind']} {meta['namespace']}/{meta['name']}"
        if obj["kind"] == "ConfigMap":
            found = self._call(what, self.core.read_namespaced_config_map, meta["name"], meta["namespace"])
            return self.core.api_client.sanitize_for_serialization(found)
        group, version, plural = CHILD_RESOURCES[obj["kind"]]
        return self._call(what, self.custom.get_namespaced_custom_object,
                          group, version, meta["namespace"], plural, meta["name"])

    def patch_child(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        group, version, plural = CHILD_RESOURCES[kind]
        self._call(f"patching {kind} {namespace}/{name}", self.custom.patch_namespaced_custom_object,
                   group, version, namespace, plural, name, patch, also=frozenset({409}))

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        group, version, plural = FINETUNEJOB
        self._call(f"writing the status of FineTuneJob {namespace}/{name}",
                   self.custom.patch_namespaced_custom_object_status,
                   group, version, namespace, plural, name, {"status": status}, also=frozenset({409}))

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        # Raw JSON: the pod models' client-side validation and conversion buy nothing here.
        response = self._call(f"listing the pods of {namespace}/{job}", self.core.list_namespaced_pod,
                              namespace, label_selector=f"{JOB_LABEL}={job}", _preload_content=False)
        pods = json.loads(response.data)["items"]
        return [p for p in pods if (p["metadata"].get("labels") or {}).get(JOB_LABEL) == job]

    def follow_log(self, namespace: str, pod: str, container: str | None) -> Iterator[str]:
        """Log lines as the container writes them, until it exits (or the stream drops, or
        nothing comes for LOG_READ_TIMEOUT_S: urllib3 raises, and the caller reopens). Lines
        are split on newlines across chunks, so a line is never cut in two."""
        response = self.core.read_namespaced_pod_log(
            pod, namespace, container=container, follow=True, _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT[0], LOG_READ_TIMEOUT_S),
        )
        try:
            pending = b""
            for raw in response.stream(decode_content=True):
                pending += raw
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.decode(errors="replace").rstrip("\r")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            response.release_conn()

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._call(f"reading pod {namespace}/{name}", self.core.read_namespaced_pod, name, namespace,
                               _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(found.data)

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the FineTuneJob. Never fails the caller: events are advisory."""
        meta = body["metadata"]
        stamp = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", contracts.FINETUNEJOB.api_version),
                "kind": body.get("kind", contracts.FINETUNEJOB.kind),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "graft-operator"},
            "reportingComponent": "graft-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc.reason)
        except Exception as exc:  # noqa: BLE001 (an unreachable server: the event is lost, the job is not)
            log.warning("could not post event %s on %s: %s", reason, meta["name"], retry.cause(exc))
