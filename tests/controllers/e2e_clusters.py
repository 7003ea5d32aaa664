"""The two clusters the end-to-end FineTuneJob tests (test_finetunejob.py) run on, behind one
small interface, so the kind workflow and this suite run the same test functions:

- `LocalCluster`: this machine's real control plane, the real Kubeflow training operator, Graft's
  operator as a process with the chart's RBAC, and the node stand-in (tests/node_standin.py, a
  test harness, not a kubelet) running each pod as local processes. A claim is a folder of the
  stand-in's, read directly.
- `KindCluster`: a kind cluster prepared by tests/e2e/setup-kind.sh, as
  .github/workflows/e2e-kind.yaml does: a real kubelet and container runtime run the trainer
  image, Graft's operator runs in the cluster from its chart. A claim is a real
  PersistentVolumeClaim of the default StorageClass, read through a pod that mounts it.

What differs is only how a test reaches what a user would look at: the claim's files and the
rank process to kill. Everything else goes through the API server, the same way on both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from tools import wait_for

# The container the rendered PyTorchJob runs the trainer in (the training operator's default).
TRAINER_CONTAINER = "pytorch"
TRAINER_IMAGE_DEFAULT = "ghcr.io/graft-dev/graft-trainer"
CLAIM_MOUNT = "/claim"

# Run inside a trainer container (kubectl exec): kill -9 the rank process, which is the child of
# the container's torchrun agent (PID 1) whose command line names graft_trainer.
KILL_RANK = """
import os, signal
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        ppid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
        command = open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        continue
    if ppid == 1 and b'graft_trainer' in command:
        os.kill(int(pid), signal.SIGKILL)
        print(pid)
"""


class LocalCluster:
    name = "local"

    def __init__(self, control_plane, node):
        self.control_plane, self.node = control_plane, node
        self.kubeconfig = control_plane.kubeconfig

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.control_plane.kubectl(*args, input=input, check=check)

    def claim(self, namespace: str, name: str) -> None:
        from controlplane.controllers import bound_claim

        bound_claim(self.control_plane, namespace, name)

    def names(self, namespace: str, claim: str, folder: str) -> list[str]:
        path = self.files(namespace, claim, folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def files(self, namespace: str, claim: str, folder: str) -> Path:
        """The folder on the claim itself: the stand-in gives each claim one host folder."""
        return self.node.workdir / "claims" / namespace / claim / folder

    def kill_training_process(self, namespace: str, pod: str) -> None:
        """kill -9 the rank under the pod's container: the stand-in execs the container's
        command (torchrun) in the process it started; the rank is its graft_trainer child."""
        import psutil

        agent = psutil.Process(self.node.containers[(namespace, pod, TRAINER_CONTAINER)].proc.pid)
        rank = wait_for(lambda: [c for c in agent.children() if "graft_trainer" in c.cmdline()],
                        timeout=240, explain=lambda: [c.cmdline() for c in agent.children()])
        assert len(rank) == 1, [c.cmdline() for c in rank]
        os.kill(rank[0].pid, signal.SIGKILL)


class KindCluster:
    name = "kind"

    def __init__(self, image: str):
        self.kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
        self.image = image
        self.copies = Path(tempfile.mkdtemp(prefix="graft-kind-claims-"))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([shutil.which("kubectl") or "kubectl", *args], input=input, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def claim(self, namespace: str, name: str) -> None:
        """A claim of the default StorageClass (kind's local-path: one node, so every pod of
        the job mounts it) and a pod that mounts it read-only, for reading it back."""
        self.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": self._reader(name)}, "spec": {
                    "containers": [{"name": "read", "image": self.image, "imagePullPolicy": "IfNotPresent",
                                    "command": ["python", "-c", "import time; time.sleep(86400)"],
                                    "volumeMounts": [{"name": "claim", "mountPath": CLAIM_MOUNT, "readOnly": True}]}],
                    "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": name}}]}},
            ]}))
        self.kubectl("wait", "-n", namespace, f"pod/{self._reader(name)}", "--for=condition=Ready", "--timeout=300s")

    def names(self, namespace: str, claim: str, folder: str) -> list[str]:
        listed = self.kubectl("exec", "-n", namespace, self._reader(claim), "--", "ls", "-1",
                              f"{CLAIM_MOUNT}/{folder}", check=False)
        return sorted(listed.stdout.split()) if listed.returncode == 0 else []

    def files(self, namespace: str, claim: str, folder: str) -> Path:
        """A fresh local copy of the folder (kubectl cp), taken now."""
        copy = self.copies / uuid.uuid4().hex / folder
        copy.parent.mkdir(parents=True)
        self.kubectl("cp", f"{namespace}/{self._reader(claim)}:{CLAIM_MOUNT}/{folder}", str(copy))
        return copy

    def kill_training_process(self, namespace: str, pod: str) -> None:
        killed = wait_for(lambda: self.kubectl("exec", "-n", namespace, pod, "-c", TRAINER_CONTAINER, "--",
                                               "python", "-c", KILL_RANK, check=False).stdout.split(),
                          timeout=240)
        assert len(killed) == 1, killed

    @staticmethod
    def _reader(claim: str) -> str:
        return f"read-{claim}"
