"""A NODE STAND-IN for the integration suite: a test harness, not a kubelet. No container
runtime or kubelet can run here, so this registers one Node with the real API server, lets the
real kube-scheduler bind pods to it, and runs each bound pod's containers as local processes,
writing their state back through the API the way a kubelet would.

What it does, per pod bound to it:
- a private mount namespace with an overlay of this machine's root as the container's root
  (the "image" is this checkout's venv: its bin folder leads PATH), the pod's volumes mounted
  at their mountPaths (configMap files, emptyDir folders, hostPath, a shared folder per
  persistentVolumeClaim), `/etc/hosts` naming every Service of the namespace and every pod's
  hostname.subdomain as 127.0.0.1 (a file bound over it, as the kubelet binds its own, rewritten
  when Services or pods of the namespace come or go) and `terminationMessagePath` backed by a
  file it reads after the exit;
- the pod's env (values, fieldRef to metadata/status, configMapKeyRef), command, args and
  workingDir;
- phase, containerStatuses (running/terminated, exit code, reason, termination message with
  FallbackToLogsOnError, restartCount) through pods/status; restartPolicy honoured with a
  short back-off; deletion honours the grace period (SIGTERM, then SIGKILL);
- container logs served on the kubelet's log endpoint (HTTPS on loopback, the Node's
  daemonEndpoints), so `kubectl logs` and `graft logs -f` read them through the API server; as
  the kubelet serves them, the current run of a container from its start and the run before
  with previous=true (a restart starts a new log).

What it does NOT do (a test that needs it says so): images, resource limits or cgroups, network
isolation (every pod shares loopback, so two jobs must not listen on the same port), probes,
init containers, securityContext (processes run as this user), secrets as volumes.
"""

from __future__ import annotations

import datetime
import http.server
import os
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

NODE_NAME = "graft-node-standin"
VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
RESTART_BACKOFF_S = 1.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    """One run of one container: its process, log file and termination-message file."""

    name: str
    log: Path
    message: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: str = ""
    last_state: dict = field(default_factory=dict)


class NodeStandIn:
    """`with NodeStandIn(api_client, workdir, certs) as node:` registers the Node and runs the
    pods bound to it until the block ends; `node.pods_run` lists every pod it started."""

    def __init__(self, api: client.ApiClient, workdir: Path, cert: Path, key: Path,
                 capacity: dict[str, str] | None = None):
        self.api, self.workdir, self.cert, self.key = api, workdir, cert, key
        self.core = client.CoreV1Api(api)
        self.capacity = capacity or {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        self.containers: dict[tuple[str, str, str], Container] = {}
        self.pods_run: list[str] = []
        self._hosts: dict[str, list[Path]] = {}  # namespace -> the hosts files of its pods
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> NodeStandIn:
        self._serve_logs()
        self._register()
        self._spawn(self._watch_pods)
        self._spawn(self._watch_services)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        with self._lock:
            running = [c for c in self.containers.values() if c.proc and c.proc.poll() is None]
        for container in running:
            _signal_group(container.proc, signal.SIGKILL)
        self._server.shutdown()
        try:
            self.core.delete_node(NODE_NAME)
        except ApiException:
            pass

    def _spawn(self, target, *args) -> None:
        def run() -> None:
            try:
                target(*args)
            except (ApiException, urllib3.exceptions.HTTPError):
                if not self._stopping.is_set():
                    raise
                # the node is going away with the control plane: a pod's last delete or status
                # write finds no API server, as a kubelet's would

        thread = threading.Thread(target=run, name=target.__name__, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _api(self, call, *args, **kwargs):
        """A pod's status write, read or delete, retried through an API server restart as a
        kubelet retries it (tests restart the server under running pods); given up only when
        the node itself stops."""
        delay = 0.1
        while True:
            try:
                return call(*args, **kwargs)
            except (ApiException, urllib3.exceptions.HTTPError) as exc:
                if isinstance(exc, ApiException) and exc.status and exc.status < 500:
                    raise
                if self._stopping.wait(delay):
                    raise
                delay = min(2 * delay, 2.0)

    def _register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME,
                                                           "kubernetes.io/os": "linux"}}}
        try:
            self.core.create_node(node)
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Admission taints a new Node not-ready; the node lifecycle controller (not run here)
        # would lift it once the node reports Ready, as this one does at once.
        self.core.patch_node(NODE_NAME, {"spec": {"taints": None}})
        self.core.patch_node_status(NODE_NAME, {"status": {
            "capacity": self.capacity, "allocatable": self.capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": NODE_NAME}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "StandInReady",
                            "message": "node stand-in of the Graft test suite",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
            "nodeInfo": {"kubeletVersion": "stand-in", "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "stand-in://processes", "kernelVersion": "", "osImage": "",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }})

    # -- pods -----------------------------------------------------------------------------
    def _watch(self, list_call, handle, **kwargs) -> None:
        """`handle(event)` for each event of a watch on `list_call` until the stand-in stops,
        watching again after a dropped stream or an API server restart."""
        while not self._stopping.is_set():
            try:
                for event in watch.Watch().stream(list_call, timeout_seconds=30, **kwargs):
                    handle(event)
                    if self._stopping.is_set():
                        return
            except Exception:  # the API server restarting, a dropped stream: watch again
                if not self._stopping.wait(1):
                    continue

    def _watch_pods(self) -> None:
        seen: set[str] = set()

        def handle(event: dict) -> None:
            pod = event["raw_object"]
            if event["type"] == "DELETED" or pod["metadata"].get("deletionTimestamp"):
                self._spawn(self._delete, pod)
            elif pod["metadata"]["uid"] not in seen:
                seen.add(pod["metadata"]["uid"])
                self._spawn(self._run_pod, pod)
                self._write_hosts(pod["metadata"]["namespace"])

        self._watch(self.core.list_pod_for_all_namespaces, handle, field_selector=f"spec.nodeName={NODE_NAME}")

    def _run_pod(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name = meta["namespace"], meta["name"]
        root = self.workdir / "pods" / namespace / name
        root.mkdir(parents=True, exist_ok=True)
        self.pods_run.append(f"{namespace}/{name}")
        mounts = self._volumes(pod, root)
        hosts = root / "hosts"
        with self._lock:
            self._hosts.setdefault(namespace, []).append(hosts)
        self._write_hosts(namespace)
        statuses = []
        for spec_container in spec["containers"]:
            container = Container(spec_container["name"], root / f"{spec_container['name']}.log",
                                  root / f"{spec_container['name']}.termination-log")
            self.containers[(namespace, name, container.name)] = container
            statuses.append((spec_container, container))
        for spec_container, container in statuses:
            self._spawn(self._supervise, pod, spec_container, container, mounts, hosts, root)

    def _supervise(self, pod, spec_container, container: Container, mounts, hosts, root) -> None:
        """Run the container, restarting it as restartPolicy says, and report each state."""
        policy = pod["spec"].get("restartPolicy", "Always")
        while not self._stopping.is_set():
            self._start(pod, spec_container, container, mounts, hosts, root)
            self._report(pod)
            code = container.proc.wait()
            if self._stopping.is_set() or self._deleted(pod):
                return
            message = container.message.read_text(errors="replace") if container.message.exists() else ""
            if not message and code != 0 and spec_container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                message = "\n".join(container.log.read_text(errors="replace").splitlines()[-80:])
            container.last_state = {"terminated": {
                "exitCode": code if code >= 0 else 128 - code, "reason": "Completed" if code == 0 else "Error",
                "message": message[-4096:], "startedAt": container.started_at, "finishedAt": _now()}}
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if not restart:
                self._report(pod, finished=True)
                return
            container.restarts += 1
            self._report(pod, waiting=True)
            if self._stopping.wait(RESTART_BACKOFF_S):
                return

    def _start(self, pod, spec_container, container: Container, mounts, hosts, root: Path) -> None:
        env = self._env(pod, spec_container)
        command = [*spec_container.get("command", []), *spec_container.get("args", [])]
        if not command:
            raise RuntimeError(f"pod {pod['metadata']['name']}: the node stand-in needs an explicit command")
        overlay = root / f"{container.name}.fs"
        mount_lines = [f"mkdir -p {q(overlay)} && mount -t tmpfs tmpfs {q(overlay)}",
                       f"mkdir -p {q(overlay)}/upper {q(overlay)}/work {q(overlay)}/root",
                       f"mount -t overlay overlay -o lowerdir=/,upperdir={q(overlay)}/upper,"
                       f"workdir={q(overlay)}/work {q(overlay)}/root",
                       f"for d in proc sys dev; do mount --rbind /$d {q(overlay)}/root/$d; done",
                       f"mount --bind {q(hosts)} {q(overlay)}/root/etc/hosts"]
        container.message.write_text("")
        message_path = spec_container.get("terminationMessagePath", "/dev/termination-log")
        binds = [(container.message, message_path)]
        for mount in spec_container.get("volumeMounts", []):
            source = mounts.get(mount["name"])
            if source is not None:
                binds.append((source / mount.get("subPath", ""), mount["mountPath"]))
        for source, target in binds:
            inside = f"{q(overlay)}/root{q(target)}"
            make = f"mkdir -p {inside}" if source.is_dir() else f"mkdir -p $(dirname {inside}) && touch {inside}"
            mount_lines.append(f"{make} && mount --bind {q(source)} {inside}")
        # This checkout and its venv stand in for the image: bound last, so a volume mounted
        # over their path (an emptyDir at /tmp, when the checkout lives under /tmp) cannot
        # hide the trainer from the container.
        for folder in sorted({Path(sys.prefix), REPO}, key=lambda p: len(p.parts)):
            inside = f"{q(overlay)}/root{q(folder)}"
            mount_lines.append(f"mkdir -p {inside} && mount --bind {q(folder)} {inside}")
        workdir = spec_container.get("workingDir", "/")
        mount_lines.append(f"mkdir -p {q(overlay)}/root{q(workdir)}")
        exports = " ".join(f"{key}={q(value)}" for key, value in env.items())
        mount_lines.append(f"exec chroot {q(overlay)}/root /usr/bin/env -i {exports} "
                           f"sh -c {q('cd ' + q(workdir) + ' && exec ' + ' '.join(q(c) for c in command))}")
        script = root / f"{container.name}.start.sh"
        script.write_text("set -e\nmount --make-rprivate /\n" + "\n".join(mount_lines) + "\n")
        if container.restarts and container.log.exists():  # a new run, a new log (kubelet-like)
            container.log.replace(container.log.with_suffix(".previous.log"))
        log = container.log.open("ab")
        container.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", str(script)],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        container.started_at = _now()

    def _env(self, pod: dict, spec_container: dict) -> dict[str, str]:
        meta = pod["metadata"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "spec.nodeName": NODE_NAME, "status.podIP": "127.0.0.1",
                  "status.hostIP": "127.0.0.1",
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default")}
        for kind in ("labels", "annotations"):
            for key, value in (meta.get(kind) or {}).items():
                fields[f"metadata.{kind}['{key}']"] = value
        env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOSTNAME": meta["name"],
               "KUBERNETES_SERVICE_HOST": "127.0.0.1"}
        for item in spec_container.get("env", []):
            source = item.get("valueFrom") or {}
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
            elif "fieldRef" in source:
                env[item["name"]] = fields.get(source["fieldRef"]["fieldPath"], "")
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                data = self.core.read_namespaced_config_map(ref["name"], meta["namespace"]).data or {}
                env[item["name"]] = data.get(ref["key"], "")
        return env

    def _volumes(self, pod: dict, root: Path) -> dict[str, Path]:
        """Each volume's folder on this machine, filled the way the kubelet fills it."""
        namespace = pod["metadata"]["namespace"]
        found: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes", []):
            name = volume["name"]
            if "configMap" in volume:
                folder = root / "volumes" / name
                folder.mkdir(parents=True, exist_ok=True)
                data = self.core.read_namespaced_config_map(volume["configMap"]["name"], namespace).data or {}
                items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (folder / item["path"]).write_text(data.get(item["key"], ""))
                found[name] = folder
            elif "emptyDir" in volume:
                found[name] = root / "volumes" / name
                found[name].mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                found[name] = Path(volume["hostPath"]["path"])
                found[name].mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                found[name] = self.workdir / "claims" / namespace / volume["persistentVolumeClaim"]["claimName"]
                found[name].mkdir(parents=True, exist_ok=True)
        return found

    def _watch_services(self) -> None:
        """Rewrite a namespace's hosts files whenever one of its Services comes or goes: a
        controller may create a pod before the Service its peers reach it by."""
        self._watch(self.core.list_service_for_all_namespaces,
                    lambda event: self._write_hosts(event["object"].metadata.namespace))

    def _write_hosts(self, namespace: str) -> None:
        """Every Service of the namespace and every pod name a headless Service gives
        (hostname.subdomain, as cluster DNS answers for pods that set both) as 127.0.0.1, the
        one network this stand-in has, into the hosts file of each of the namespace's pods
        (written in place: it is bound, by inode, over the containers' /etc/hosts)."""
        with self._lock:
            files = list(self._hosts.get(namespace, []))
        if not files:
            return
        names = {"localhost"}
        domains = [service.metadata.name for service in self.core.list_namespaced_service(namespace).items]
        pods = self.core.list_namespaced_pod(namespace).items
        domains += [f"{p.spec.hostname}.{p.spec.subdomain}" for p in pods if p.spec.hostname and p.spec.subdomain]
        for name in domains:
            names |= {name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"}
        line = ("127.0.0.1 " + " ".join(sorted(names)) + "\n").encode()
        with self._lock:
            for hosts in files:
                hosts.touch()
                with hosts.open("r+b") as file:  # in place: the whole new line, then the old tail cut
                    file.write(line)
                    file.truncate(len(line))

    def _report(self, pod: dict, finished: bool = False, waiting: bool = False) -> None:
        meta = pod["metadata"]
        statuses, codes = [], []
        for spec_container in pod["spec"]["containers"]:
            container = self.containers[(meta["namespace"], meta["name"], spec_container["name"])]
            if finished:
                state = container.last_state
                codes.append(state["terminated"]["exitCode"])
            elif waiting:
                state = {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": f"back-off restarting failed container {container.name}"}}
            else:
                state = {"running": {"startedAt": container.started_at}}
            statuses.append({"name": container.name, "image": spec_container.get("image", ""), "imageID": "",
                             "ready": "running" in state, "restartCount": container.restarts,
                             "started": "running" in state, "state": state,
                             "lastState": container.last_state if not finished else {}})
        phase = ("Succeeded" if all(c == 0 for c in codes) else "Failed") if finished else "Running"
        ready = "True" if phase == "Running" and not waiting else "False"
        status = {"phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                  "podIPs": [{"ip": "127.0.0.1"}], "startTime": pod.get("status", {}).get("startTime") or _now(),
                  "containerStatuses": statuses,
                  "conditions": [{"type": t, "status": ready if t in ("Ready", "ContainersReady") else "True",
                                  "lastTransitionTime": _now()}
                                 for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}
        try:
            self._api(self.core.patch_namespaced_pod_status, meta["name"], meta["namespace"], {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _deleted(self, pod: dict) -> bool:
        try:
            live = self._api(self.core.read_namespaced_pod, pod["metadata"]["name"], pod["metadata"]["namespace"])
        except ApiException:
            return True
        return live.metadata.uid != pod["metadata"]["uid"] or live.metadata.deletion_timestamp is not None

    def _delete(self, pod: dict) -> None:
        """Stop the pod's processes within its grace period, then remove it (as the kubelet does)."""
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds") or 0
        procs = [c.proc for (ns, name, _), c in list(self.containers.items())
                 if ns == meta["namespace"] and name == meta["name"] and c.proc and c.proc.poll() is None]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
        try:
            self._api(self.core.delete_namespaced_pod, meta["name"], meta["namespace"], grace_period_seconds=0,
                      body=client.V1DeleteOptions(preconditions={"uid": meta["uid"]}))
        except ApiException:
            pass

    # -- the kubelet's log endpoint --------------------------------------------------------
    def _serve_logs(self) -> None:
        node = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # the test log is for the test's own lines
                pass

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404, "the node stand-in serves only /containerLogs")
                    return
                container = node.containers.get(tuple(parts[1:]))
                if container is None:
                    self.send_error(404, f"no container {'/'.join(parts[1:])} on {NODE_NAME}")
                    return
                query = urllib.parse.parse_qs(url.query)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                if query.get("previous") == ["true"]:
                    previous = container.log.with_suffix(".previous.log")
                    self.wfile.write(previous.read_bytes() if previous.exists() else b"")
                    return
                node._stream(container, self.wfile, follow=query.get("follow") == ["true"],
                             tail=int(query["tailLines"][0]) if "tailLines" in query else None)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._spawn(self._server.serve_forever)

    def _stream(self, container: Container, out, follow: bool, tail: int | None) -> None:
        """The log from the start (or its last `tail` lines); with follow, new lines as they
        come until the container's current run exits."""
        proc = container.proc
        with container.log.open("rb") as log:
            if tail is not None:
                lines = log.read().splitlines(keepends=True)[-tail:] if tail else []
                out.write(b"".join(lines))
            while True:
                chunk = log.read(65536)
                if chunk:
                    try:
                        out.write(chunk)
                        out.flush()
                    except OSError:
                        return
                    continue
                exited = proc is None or proc.poll() is not None
                if not follow or self._stopping.is_set() or (exited and log.tell() >= os.fstat(log.fileno()).st_size):
                    return
                time.sleep(0.1)


def q(value) -> str:
    return shlex.quote(str(value))


def _expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) references, as the kubelet expands them."""
    for key, replacement in env.items():
        value = value.replace(f"$({key})", replacement)
    return value


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
