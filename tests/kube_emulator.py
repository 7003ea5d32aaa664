"""kmock's in-memory Kubernetes API *emulator* (not an API server) on loopback, served from a
background thread so the synchronous kubernetes client, kubectl, the CLI, the operator process
and the benchmarks can all talk to it. Shared by tests/sdk, tests/operator and bench/.

Gaps closed here because Graft's clients depend on them: create answers 201 and stores the
object with the uid, namespace and creationTimestamp an API server assigns (so `kubectl apply`
of a plain manifest gets ownerReferences-ready objects); `watch=True` (what the Python client
sends; the API server parses it as a bool) counts as a watch; the resources Graft uses are
declared (from the real CRDs when given, with their short names and subresources); pod logs are
served from `pod_logs`. Still NOT emulated: resourceVersions, selectors, defaulting, admission,
garbage collection. Tests assert on what was stored, requested and reacted to, never on server
semantics the emulator lacks.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable

import kmock
import yaml

VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
# What Graft reads and writes: core kinds, and its three child kinds (when no CRDs are given).
RESOURCES = {
    "v1/namespaces": ("Namespace", False),
    "v1/configmaps": ("ConfigMap", True),
    "v1/pods": ("Pod", True),
    "v1/events": ("Event", True),
    "kubeflow.org/v1/pytorchjobs": ("PyTorchJob", True),
    "trainer.kubeflow.org/v1alpha1/trainjobs": ("TrainJob", True),
    "ray.io/v1/rayjobs": ("RayJob", True),
}


class _RequestLog(list):
    """kmock's request history. Its reaction matching scans the history (through filter views)
    for every new request, O(requests so far) each, so a few thousand requests took minutes and
    the emulator, not the client under test, set the pace. Matching only asks whether the
    request in hand passes a reaction's criteria (Graft's reactions are plain filters, no
    slices or counts), so iteration shows only the requests being handled right now; the list
    itself keeps everything, for counting."""

    def __init__(self):
        super().__init__()
        self.active: dict[int, object] = {}  # id -> request, while it is handled (watches: open)

    def append(self, request) -> None:
        super().append(request)
        self.active[id(request)] = request

    def done(self, request) -> None:
        self.active.pop(id(request), None)

    def __iter__(self):
        return iter(list(self.active.values()))

    def everything(self) -> list:
        return self[:]


class _ApiServerLike(kmock.KubernetesEmulator):
    """The emulator, plus what an API server does on every request that Graft relies on."""

    kinds: dict[tuple[str, str, str], str]  # (group, version, plural) -> kind, see declare()

    async def __call__(self, raw_request):
        if raw_request.query.get("watch") == "True":
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
        return await super().__call__(raw_request)

    async def _handle(self, request):
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
        try:
            return await super()._handle(request)
        finally:
            self._requests.done(request)

    async def _serve_list(self, request):
        """Lists name their kind (`FineTuneJobList`), which kubectl's decoder insists on."""
        listing = await super()._serve_list(request)
        resource = request.resource
        kind = self.kinds.get((resource.group or "", resource.version, resource.plural))
        if kind:
            api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
            listing.update(apiVersion=api_version, kind=f"{kind}List")
        return listing


class Emulator:
    """`with Emulator(crds) as api:` serves until the block ends; `api.url` is its address."""

    def __init__(self, crds: Iterable[dict[str, Any]] = ()):
        self.crds = list(crds)
        self.url = ""
        self.pod_logs: dict[str, list[str]] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="kmock-emulator")

    def __enter__(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the kmock emulator did not start within 20 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(2)  # a client still holding a watch open only delays its own thread

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with _ApiServerLike() as handler, kmock.Server(handler) as server:
            self.handler = handler
            handler._requests = _RequestLog()
            handler.kinds = {}
            for resource, (kind, namespaced) in RESOURCES.items():
                declare(handler, resource, kind=kind, namespaced=namespaced, subresources=["status"])
            for crd in self.crds:
                declare_crd(handler, crd)
            handler["post"] << 201 << (lambda request: request.data)
            handler["get", kmock.resource("v1/pods"), kmock.subresource("log")] << self._pod_log
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def _pod_log(self, request) -> bytes:
        return "".join(f"{line}\n" for line in self.pod_logs.get(request.name, [])).encode()

    def _in_loop(self, function):
        """Run `function()` on the emulator's event loop: its state is not thread-safe."""
        async def call():
            return function()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(60)

    def requests(self) -> list:
        """Every request answered so far (a watch stream counts once)."""
        return self._in_loop(self.handler._requests.everything)

    def request_count(self) -> int:
        return self._in_loop(lambda: len(self.handler._requests))

    def stored(self, resource: str, name: str, namespace: str = "default") -> dict | None:
        """The object as stored now, or None when absent or deleted."""
        def find():
            key, objects = (kmock.resource(resource), namespace, name), self.handler.objects
            return None if key not in objects or objects[key].deleted else objects[key].raw
        return self._in_loop(find)

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"}}],
        }))
        return path


def declare(handler: _ApiServerLike, resource: str, **info: Any) -> None:
    """Serve `group/version/plural` (`version/plural` for core) with the given ResourceInfo."""
    handler.resources[resource] = kmock.ResourceInfo(verbs=VERBS, **info)
    *group, version, plural = resource.split("/")
    handler.kinds[("/".join(group), version, plural)] = info["kind"]


def declare_crd(handler: _ApiServerLike, crd: dict[str, Any]) -> None:
    """Serve a CustomResourceDefinition's resource the way an API server lists it."""
    names, group = crd["spec"]["names"], crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if version.get("served", True):
            declare(handler, f"{group}/{version['name']}/{names['plural']}", kind=names["kind"],
                    singular=names.get("singular"), namespaced=crd["spec"]["scope"] == "Namespaced",
                    shortnames=names.get("shortNames", []), subresources=list(version.get("subresources") or {}))
