"""Faults the tests inflict on their own control plane (tests/kubernetes_faults/conftest.py)."""

from __future__ import annotations

import json
import subprocess


def restart_apiserver(plane, sig: int = 9) -> None:
    """kill -9 (or `sig`) the kube-apiserver and start it again on the same port."""
    plane.stop_apiserver(sig)
    plane.start_apiserver()


def etcd_revision(plane) -> int:
    out = subprocess.run([str(plane.binaries["etcdctl"]), "--endpoints", f"http://127.0.0.1:{plane.etcd_port}",
                          "endpoint", "status", "-w", "json"], capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["Status"]["header"]["revision"])


def compact_etcd(plane) -> int:
    revision = etcd_revision(plane)
    subprocess.run([str(plane.binaries["etcdctl"]), "--endpoints", f"http://127.0.0.1:{plane.etcd_port}",
                    "compact", str(revision)], capture_output=True, text=True, check=True)
    return revision

OPERATOR_USER = "system:serviceaccount:graft-system:graft-operator"
OPERATOR_USER = "system:serviceaccount:graft-system:graft-operator"
