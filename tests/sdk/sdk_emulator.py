"""kmock's Kubernetes API *emulator* (not an API server) served on loopback from a background
thread, so the synchronous kubernetes client, the CLI and benchmarks can talk to it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import yaml


class Emulator:
    """kmock's KubernetesEmulator on 127.0.0.1, with the gaps that matter here closed:
    create answers 201 (as the API server does), the resources Graft uses are declared, and
    `watch=True` (what the Python client sends; the API server parses it as a bool) is
    recognised as a watch. Selectors and resourceVersions are NOT emulated."""

    RESOURCES = {
        "v1/namespaces": ("Namespace", False),
        "v1/configmaps": ("ConfigMap", True),
        "v1/pods": ("Pod", True),
        "v1/events": ("Event", True),
        "kubeflow.org/v1/pytorchjobs": ("PyTorchJob", True),
        "trainer.kubeflow.org/v1alpha1/trainjobs": ("TrainJob", True),
        "ray.io/v1/rayjobs": ("RayJob", True),
    }

    def __init__(self):
        import kmock

        self.kmock = kmock
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),),
                                        daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the emulator did not start"

    async def _serve(self):
        kmock = self.kmock

        class WatchTrueEmulator(kmock.KubernetesEmulator):
            async def __call__(self, raw_request):
                if raw_request.query.get("watch") == "True":
                    raw_request = raw_request.clone(rel_url=raw_request.rel_url.update_query(watch="true"))
                return await super().__call__(raw_request)

        async with WatchTrueEmulator() as handler, kmock.Server(handler) as server:
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            for resource, (kind, namespaced) in self.RESOURCES.items():
                handler.resources[resource] = {
                    "kind": kind, "namespaced": namespaced,
                    "verbs": ["create", "get", "list", "watch", "patch", "delete"],
                }
            handler["post"] << 201 << (lambda request: request.data)
            self.pod_logs: dict[str, list[str]] = {}
            handler["get", kmock.resource("v1/pods"), kmock.subresource("log")] << self._pod_log
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def _pod_log(self, request):
        return "".join(f"{line}\n" for line in self.pod_logs.get(request.name, [])).encode()

    def stored(self, resource: str, name: str, namespace: str = "default") -> dict | None:
        key = (self.kmock.resource(resource), namespace, name)
        objects = self.handler.objects
        if key not in objects or objects[key].deleted:
            return None
        return objects[key].raw

    def requests(self) -> list:
        return list(self.handler)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"}}],
        }))
        return path

    def close(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(2)  # a client still holding a watch open only delays its own thread
