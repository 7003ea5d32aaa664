"""What the packaging layer produces, computed once per session with the real engines: the Helm
chart rendered by the Helm v4 engine (helm-python-sdk) and the kustomize overlays built by
kubectl's kustomize."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tools import venv_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "graft"
VALUES_DIR = Path(__file__).parent / "values"
OVERLAYS = ("standalone", "with-kubeflow", "with-kuberay")
RELEASE, NAMESPACE = "graft", "graft-system"

Manifest = dict[str, Any]
# Labels only Helm adds (release bookkeeping); everything else must match kustomize.
HELM_ONLY_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/version", "helm.sh/chart"}


def without_helm_labels(node):
    """`node` with Helm's release labels removed wherever they stand (selectors included)."""
    if isinstance(node, dict):
        return {k: without_helm_labels(v) for k, v in node.items() if k not in HELM_ONLY_LABELS}
    if isinstance(node, list):
        return [without_helm_labels(v) for v in node]
    return node


def values_files() -> list[Path]:
    return sorted(VALUES_DIR.glob("*.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def docs(text: str) -> list[Manifest]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the upstream CRDs are megabytes
    return [d for d in yaml.load_all(text, Loader=loader) if isinstance(d, dict)]


@cache
def _chart():
    import helm_python as helm

    return helm.Chart.load(CHART)


def render_chart(values: dict[str, Any], *, with_crds: bool = True) -> list[Manifest]:
    """Every object `helm install` would create (templates, then crds/), hooks included."""
    rendered = _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    objects = [obj for path, text in sorted(rendered.items()) if path.endswith(".yaml") for obj in docs(text)]
    if with_crds:
        objects += [obj for crd in _chart().crds for obj in docs(crd["data"])]
    return objects


@cache
def _kustomize_text(path: str) -> str:
    result = subprocess.run([venv_tool("kubectl") or "kubectl", "kustomize", path], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return result.stdout


def kustomize(relative: str) -> list[Manifest]:
    return docs(_kustomize_text(str(REPO / relative)))


def pod_specs(node: Any, path: str = "") -> list[tuple[str, Manifest]]:
    """Every PodSpec nested anywhere in an object (Deployment, Pod, PyTorchJob replicas, RayJob
    head/workers, the runtime's JobSet template), found by its `containers` list."""
    found: list[tuple[str, Manifest]] = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append((path or "(root)", node))
        for key, value in node.items():
            found += pod_specs(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += pod_specs(value, f"{path}[{index}]")
    return found
