"""The real upstream controllers, run out of cluster against the session's control plane: the
Kubeflow training operator (PyTorchJob), the KubeRay operator (RayCluster/RayJob) and the
Kubeflow Trainer v2 controller manager with the JobSet controller. build.sh builds each from its
published Go module (versions in versions.env) into the same cache as the control plane, only
when missing.

Each runs as its own process with the admin kubeconfig, leader election off, its metrics and
probe endpoints on their own loopback ports, and a log kept for the test's failure report.
Webhooks are served on loopback and registered with `clientConfig.url: https://127.0.0.1:PORT/...`
(a serving certificate for 127.0.0.1 signed by a CA of our own): the training operator's
validating webhook (the certificate put in the Secret its cert rotator manages), and the Trainer's
and JobSet's defaulting and validating webhooks (cert management off in their configuration;
the webhook configurations are upstream's own, built by kustomize from their modules). KubeRay
runs with webhooks off.

A controller that fails to build or start raises ControllerError with its log's tail: a loud
failure, never a skip.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.cluster import BUILD_SCRIPT, ControlPlane, _tail, free_port

# The namespace the controllers "run in" (their Secrets, their leases if they took any).
CONTROLLER_NAMESPACE = "graft-controllers"
TRAINING_OPERATOR_WEBHOOK = "validator.training-operator.kubeflow.org"
TRAINING_OPERATOR_SECRET = "training-operator-webhook-cert"
TRAINING_OPERATOR_SERVICE = "training-operator"
# The training operator's cert rotator watches this fixed path (not $TMPDIR); each controller
# process gets its own mount namespace with a folder of ours bound there.
TRAINING_OPERATOR_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
KNOWN = ("training-operator", "kuberay", "trainer")
# Controllers a named one needs beside it, started first (build.sh builds them together).
COMPANIONS = {"trainer": ("jobset",)}


class ControllerError(RuntimeError):
    """Building or starting a controller failed; the message says which and why."""


def build(names: list[str]) -> dict[str, Path]:
    """Each controller binary's path (build.sh builds the missing ones; instant when cached)."""
    unknown = sorted(set(names) - set(KNOWN))
    if unknown:
        raise ControllerError(f"unknown controllers {unknown}; known: {KNOWN}")
    env = {**os.environ, "GRAFT_CONTROLLERS": " ".join(names)}
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ControllerError(f"building controllers {names} failed (tests/controlplane/build.sh):\n"
                              f"{result.stderr[-4000:]}")
    return {name: Path(path) for name, _, path in
            (line.partition("=") for line in result.stdout.splitlines() if "=" in line)}


def _webhook_certificates(folder: Path, dns_name: str, ca_name: str) -> dict[str, bytes]:
    """A CA (valid for `ca_name`, as the cert rotator checks) and a serving certificate for
    `dns_name` and 127.0.0.1, both valid for years so the rotator keeps them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    begin, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=3650)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(begin).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectAlternativeName([x509.DNSName(ca_name)]), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(ca_subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(begin).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(dns_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": pem_key(ca_key),
             "tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": pem_key(key)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files


@dataclass
class Controller:
    """One controller process: its log, and the probe URL that says it is ready."""

    name: str
    argv: list[str]
    log: Path
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    bind: tuple[Path, str] | None = None  # (our folder, the fixed path it must appear at)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = self.argv
        if self.bind is not None:
            source, target = self.bind
            script = (f"set -e; mount --make-rprivate /; mkdir -p {target}; mount --bind {source} {target}; "
                      'exec "$@"')
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, self.name, *argv]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ControllerError(f"{self.name} exited ({self.proc.returncode}) while starting; "
                                      f"last lines of {self.log}:\n{_tail(self.log, 60)}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise ControllerError(f"{self.name} not ready ({self.ready_url}) within {timeout:.0f} s; "
                              f"last lines of {self.log}:\n{_tail(self.log, 60)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)


class Controllers:
    """`with Controllers(plane, ["training-operator"], workdir) as running:` builds (if
    missing), starts and waits for each named controller; `running[name]` is its Controller."""

    def __init__(self, plane: ControlPlane, names: list[str], workdir: Path):
        self.plane, self.names, self.workdir = plane, list(names), workdir
        self.running: dict[str, Controller] = {}
        self.cleanups: list = []

    def __getitem__(self, name: str) -> Controller:
        return self.running[name]

    def __enter__(self) -> Controllers:
        self.workdir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        self.binaries = build(self.names)
        self.build_s = time.monotonic() - began
        self.plane.kubectl("create", "namespace", CONTROLLER_NAMESPACE, check=False)
        try:
            companions = [companion for name in self.names for companion in COMPANIONS.get(name, ())]
            for name in companions + self.names:
                controller = getattr(self, f"_{name.replace('-', '_')}")()
                self.running[name] = controller
                controller.start()
            for controller in self.running.values():
                controller.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for controller in self.running.values():
            controller.stop()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()

    def tails(self, lines: int = 40) -> str:
        return "\n".join(f"----- {name} ({'running' if c.alive() else 'exited'}; {c.log}) -----\n{c.tail(lines)}"
                         for name, c in self.running.items())

    def _ports(self) -> tuple[int, int]:
        return free_port(), free_port()

    def _env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.plane.kubeconfig)}

    # -- the Kubeflow training operator ---------------------------------------------------
    def _training_operator(self) -> Controller:
        """PyTorchJob only. Its cert rotator always runs: it keeps a CA and serving cert in
        Secret training-operator-webhook-cert of $MY_POD_NAMESPACE, waits for tls.crt in its
        fixed cert dir and for the CA to be injected into the validating webhook configuration
        it names. We make the Secret with a certificate that is also valid for 127.0.0.1, so the
        rotator keeps it, the API server can call the webhook on loopback, and the same files
        are in the cert dir from the start."""
        metrics, probe = self._ports()
        webhook_port = free_port()
        certs_dir = self.workdir / "training-operator-certs"
        files = _webhook_certificates(certs_dir, f"{TRAINING_OPERATOR_SERVICE}.{CONTROLLER_NAMESPACE}.svc",
                                      "training-operator-ca")
        self.plane.kubectl("apply", "-f", "-", input=_yaml({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": TRAINING_OPERATOR_SECRET, "namespace": CONTROLLER_NAMESPACE},
            "data": {name: base64.b64encode(content).decode() for name, content in files.items()}}))
        self.plane.kubectl("apply", "-f", "-", input=_yaml({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": TRAINING_OPERATOR_WEBHOOK},
            "webhooks": [{
                "name": "validator.pytorchjob.training-operator.kubeflow.org",
                "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/validate-kubeflow-org-v1-pytorchjob",
                                 "caBundle": base64.b64encode(files["ca.crt"]).decode()},
                "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["pytorchjobs"]}],
            }]}))
        # Whoever comes after this controller stops must not meet a webhook nobody serves.
        self.cleanups.append(lambda: self.plane.kubectl(
            "delete", "validatingwebhookconfiguration", TRAINING_OPERATOR_WEBHOOK, "--ignore-not-found"))
        return Controller(
            "training-operator",
            [str(self.binaries["training-operator"]), "--enable-scheme=pytorchjob",
             f"--metrics-bind-address=127.0.0.1:{metrics}", f"--health-probe-bind-address=127.0.0.1:{probe}",
             f"--webhook-server-port={webhook_port}", f"--webhook-service-name={TRAINING_OPERATOR_SERVICE}",
             "--leader-elect=false", "--zap-log-level=info"],
            self.workdir / "training-operator.log", f"http://127.0.0.1:{probe}/readyz",
            env={**self._env(), "MY_POD_NAMESPACE": CONTROLLER_NAMESPACE},
            bind=(certs_dir, TRAINING_OPERATOR_CERT_DIR))

    # -- the KubeRay operator -------------------------------------------------------------
    def _kuberay(self) -> Controller:
        """RayCluster, RayJob and RayService controllers (all start, so the RayService CRD,
        which ../shared/crds lacks, is installed from the operator's own module); webhooks off
        (ENABLE_WEBHOOKS unset)."""
        crd = _module_dir("github.com/ray-project/kuberay/ray-operator", _version("KUBERAY_VERSION"))
        self.plane.kubectl("apply", "--server-side", "-f", str(crd / "config/crd/bases/ray.io_rayservices.yaml"))
        metrics, probe = self._ports()
        return Controller(
            "kuberay",
            [str(self.binaries["kuberay"]), f"--metrics-addr=127.0.0.1:{metrics}",
             f"--health-probe-bind-address=127.0.0.1:{probe}", "--enable-leader-election=false",
             "--log-stdout-encoder=console"],
            self.workdir / "kuberay.log", f"http://127.0.0.1:{probe}/readyz", env=self._env())

    # -- the Kubeflow Trainer v2 controller manager and the JobSet controller ----------------
    def _jobset(self) -> Controller:
        """The JobSet controller (JobSets and their pods). Its defaulting webhook is what turns
        on DNS hostnames (the pods' hostname.subdomain the Trainer's torch env points at), so
        its webhooks run, on loopback, as upstream registers them."""
        module = _module_dir("sigs.k8s.io/jobset", _version("JOBSET_VERSION"))
        self.plane.install_crds(_documents(module / "config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"))
        metrics, probe = self._ports()
        webhook_port = free_port()
        certs_dir = self.workdir / "jobset-certs"
        files = _webhook_certificates(certs_dir, f"jobset-webhook-service.{CONTROLLER_NAMESPACE}.svc", "jobset-ca")
        config = self.workdir / "jobset-config.yaml"
        config.write_text(_yaml({
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(certs_dir)},
            "metrics": {"certDir": str(certs_dir)},
        }))
        self._loopback_webhooks(module / "config/components/webhook", "jobset-", webhook_port, files["ca.crt"])
        return Controller(
            "jobset",
            [str(self.binaries["jobset"]), f"--config={config}", "--leader-elect=false",
             f"--metrics-bind-address=127.0.0.1:{metrics}", f"--health-probe-bind-address=127.0.0.1:{probe}"],
            self.workdir / "jobset.log", f"http://127.0.0.1:{probe}/readyz", env=self._env())

    def _trainer(self) -> Controller:
        """The Trainer controller manager, configured by a Configuration file (cert management
        and leader election off, every endpoint on loopback). Its webhook server still reads
        tls.crt/tls.key from $TMPDIR/k8s-webhook-server/serving-certs, so TMPDIR is a folder of
        ours holding them; its defaulting and validating webhooks are registered on loopback.
        The TrainJob and ClusterTrainingRuntime CRDs come from ../shared/crds with the session's
        control plane; TrainingRuntime (all runtime kinds are watched) from the module."""
        module = _module_dir("github.com/kubeflow/trainer/v2", _version("TRAINER_VERSION"))
        self.plane.install_crds(_documents(module / "manifests/base/crds/trainer.kubeflow.org_trainingruntimes.yaml"))
        metrics, probe = self._ports()
        webhook_port = free_port()
        temp = self.workdir / "trainer-tmp"
        files = _webhook_certificates(temp / "k8s-webhook-server" / "serving-certs",
                                      f"kubeflow-trainer-controller-manager.{CONTROLLER_NAMESPACE}.svc", "trainer-ca")
        config = self.workdir / "trainer-config.yaml"
        config.write_text(_yaml({
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration",
            "certManagement": {"enable": False},
            "leaderElection": {"leaderElect": False},
            "webhook": {"host": "127.0.0.1", "port": webhook_port},
            "metrics": {"bindAddress": f"127.0.0.1:{metrics}", "secureServing": False},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{probe}"},
        }))
        self._loopback_webhooks(module / "manifests/base/webhook", "", webhook_port, files["ca.crt"])
        return Controller(
            "trainer",
            [str(self.binaries["trainer"]), f"--config={config}", "--zap-log-level=info"],
            self.workdir / "trainer.log", f"http://127.0.0.1:{probe}/readyz",
            env={**self._env(), "TMPDIR": str(temp)})

    def _loopback_webhooks(self, kustomization: Path, prefix: str, port: int, ca: bytes) -> None:
        """Register upstream's webhook configurations (`kubectl kustomize` of its own folder)
        with each Service reference replaced by the same path on https://127.0.0.1:PORT, and
        remove them again when the controllers stop."""
        import yaml

        built = self.plane.kubectl("kustomize", str(kustomization)).stdout
        configurations = [document for document in yaml.safe_load_all(built)
                          if document and document["kind"].endswith("WebhookConfiguration")]
        for configuration in configurations:
            configuration["metadata"] = {"name": prefix + configuration["metadata"]["name"]}
            for hook in configuration["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                        "caBundle": base64.b64encode(ca).decode()}
        self.plane.kubectl("apply", "-f", "-", input="\n---\n".join(_yaml(c) for c in configurations))
        for configuration in configurations:
            kind, name = configuration["kind"].lower(), configuration["metadata"]["name"]
            self.cleanups.append(lambda kind=kind, name=name: self.plane.kubectl(
                "delete", kind, name, "--ignore-not-found"))


def _documents(path: Path) -> list[dict]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [document for document in yaml.load_all(path.read_text(), Loader=loader) if document]


def _version(name: str) -> str:
    for line in (BUILD_SCRIPT.parent / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].split()[0]
    raise ControllerError(f"{name} is not pinned in tests/controlplane/versions.env")


def _module_dir(module: str, version: str) -> Path:
    """The module's source in the Go module cache (build.sh downloaded it)."""
    import json

    result = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True,
                            text=True)
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise ControllerError(f"go mod download {module}@{version} failed: {result.stdout[-1000:]}{result.stderr[-1000:]}")
    return Path(info["Dir"])


def _yaml(document: dict) -> str:
    import yaml

    return yaml.safe_dump(document)


def watch_until(list_call, predicate, timeout: float = 120, **kwargs):
    """Watch what `list_call(**kwargs)` lists (a kubernetes-client list function) until
    `predicate(items)` (the raw objects, current as of each event) returns something truthy;
    that value. Driven by watch events, not by sleeping; AssertionError with the last items
    when the time runs out."""
    from kubernetes import watch

    deadline = time.monotonic() + timeout
    items: dict[str, dict] = {}
    listed = list_call(**kwargs, _preload_content=False)
    import json as _json

    body = _json.loads(listed.data)
    for item in body.get("items", []):
        items[item["metadata"]["uid"]] = item
    version = body["metadata"]["resourceVersion"]
    value = predicate(list(items.values()))
    while not value:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not reached within {timeout:.0f} s; last objects: "
                                 f"{[(i['metadata']['name'], i.get('status')) for i in items.values()]}")
        for event in watch.Watch().stream(list_call, resource_version=version, timeout_seconds=max(1, int(left)),
                                          **kwargs):
            item = event["raw_object"]
            version = item["metadata"]["resourceVersion"]
            if event["type"] == "DELETED":
                items.pop(item["metadata"]["uid"], None)
            else:
                items[item["metadata"]["uid"]] = item
            value = predicate(list(items.values()))
            if value:
                break
    return value


def bound_claim(plane: ControlPlane, namespace: str, name: str, size: str = "1Gi") -> None:
    """A PersistentVolumeClaim bound to a PersistentVolume of its own, bound by hand the way the
    PV controller (not run here) would, so the real scheduler's VolumeBinding admits pods that
    mount it. The node stand-in gives every pod of the namespace the same folder for it."""
    volume = f"{namespace}-{name}"
    plane.kubectl("apply", "-f", "-", input=_yaml({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "",
                  "hostPath": {"path": f"/nonexistent/graft-standin/{volume}"},
                  "claimRef": {"namespace": namespace, "name": name}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": name, "namespace": namespace,
                      "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": size}}}},
    ]}))
    plane.kubectl("patch", "pvc", name, "-n", namespace, "--subresource=status", "--type=merge",
                  "-p", '{"status": {"phase": "Bound", "accessModes": ["ReadWriteMany"], '
                        f'"capacity": {{"storage": "{size}"}}}}}}')
    plane.kubectl("patch", "pv", volume, "--subresource=status", "--type=merge", "-p",
                  '{"status": {"phase": "Bound"}}')
