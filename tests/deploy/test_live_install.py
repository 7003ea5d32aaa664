"""The packaging layer installed on a real API server: the chart by the real helm (install,
upgrade, test hooks, uninstall) and every kustomize overlay by `kubectl apply --server-side`,
each on a control plane of its own (the chart and the overlays create the same cluster-scoped
objects), then compared object by object as the server stores them. Nothing runs the
Deployment (no kubelet), so what is checked is what the server accepts and keeps."""

from __future__ import annotations

import json

import pytest
import yaml

from controlplane.cluster import running_control_plane
from deploy_helpers import (CHART, NAMESPACE, OVERLAYS, RELEASE, REPO, VALUES_DIR, load_values, render_chart,
                            without_helm_labels)

pytestmark = pytest.mark.controlplane

# What the server or the installer adds, not the package: bookkeeping every live object has.
SERVER_FIELDS = {"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"}
HELM_BOOKKEEPING = {"meta.helm.sh/release-name", "meta.helm.sh/release-namespace"}


@pytest.fixture(scope="module")
def plane(tmp_path_factory, crds_dir):
    with running_control_plane(tmp_path_factory.mktemp("deploy-plane"), crds_dir) as running:
        yield running


def live(plane, objects: list[dict]) -> dict[tuple, dict]:
    """The objects as the server stores them now, without server and installer bookkeeping."""
    found = {}
    for obj in objects:
        meta = obj["metadata"]
        group = obj["apiVersion"].rpartition("/")[0]
        args = ["get", f"{obj['kind']}.{group}" if group else obj["kind"], meta["name"], "-o", "json"]
        if meta.get("namespace"):
            args += ["-n", meta["namespace"]]
        stored = json.loads(plane.kubectl(*args).stdout)
        stored.pop("status", None)
        for key in ("clusterIP", "clusterIPs"):  # allocated by the server per Service
            stored.get("spec", {}).pop(key, None)
        for key in SERVER_FIELDS:
            stored["metadata"].pop(key, None)
        for key in ("labels", "annotations"):
            kept = {k: v for k, v in (stored["metadata"].get(key) or {}).items()
                    if k not in HELM_BOOKKEEPING and k != "kubectl.kubernetes.io/last-applied-configuration"}
            stored["metadata"].pop(key, None)
            if kept:
                stored["metadata"][key] = kept
        found[(obj["kind"], meta.get("namespace"), meta["name"])] = without_helm_labels(stored)
    return found


def installed_objects(values: dict) -> list[dict]:
    """What the chart owns in the cluster: its templates without hooks and the namespace."""
    return [o for o in render_chart(values, with_crds=False)
            if "helm.sh/hook" not in (o["metadata"].get("annotations") or {})]


def test_helm_installs_upgrades_tests_and_uninstalls_the_chart(plane):
    release = plane.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                         "--wait=false", "-o", "json")
    assert json.loads(release.stdout)["info"]["status"] == "deployed"
    objects = installed_objects({})
    stored = live(plane, objects)
    assert len(stored) == len(objects)
    deployment = stored[("Deployment", NAMESPACE, f"{RELEASE}-operator")]
    assert deployment["spec"]["replicas"] == 1

    plane.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "replicaCount=2",
               "--set", "backends.rayjob=false")
    upgraded = live(plane, installed_objects({"replicaCount": 2, "backends": {"rayjob": False}}))
    assert upgraded[("Deployment", NAMESPACE, f"{RELEASE}-operator")]["spec"]["replicas"] == 2
    role = upgraded[("ClusterRole", None, f"{RELEASE}-operator")]
    assert not any("ray.io" in rule.get("apiGroups", []) for rule in role["rules"])
    history = json.loads(plane.helm("history", RELEASE, "--namespace", NAMESPACE, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2]

    # `helm test` runs a pod that needs the operator running (no kubelet here): its objects
    # must still be ones the server accepts.
    hooks = [o for o in render_chart({}, with_crds=False)
             if "test" in (o["metadata"].get("annotations") or {}).get("helm.sh/hook", "")]
    assert hooks
    plane.kubectl("apply", "--dry-run=server", "-f", "-", input="\n---\n".join(yaml.safe_dump(h) for h in hooks))

    plane.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    leftover = plane.kubectl("get", "clusterrole,clusterrolebinding,serviceaccount,deployment", "-A",
                             "-l", "app.kubernetes.io/instance=" + RELEASE, "-o", "name").stdout
    assert leftover == ""
    plane.kubectl("delete", "namespace", NAMESPACE, "--wait=true")


@pytest.mark.parametrize("overlay", ["default", *OVERLAYS])
def test_kustomize_overlay_applies_server_side_and_matches_helm_live(plane, overlay):
    """Same settings (tests/deploy/values/<overlay>.yaml), same live objects: the chart and the
    overlay, each applied to the real server, store the same objects."""
    values = load_values(VALUES_DIR / f"{overlay}.yaml")
    plane.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
               "--wait=false", "-f", str(VALUES_DIR / f"{overlay}.yaml"))
    objects = installed_objects(values)
    from_helm = live(plane, objects)
    plane.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")

    build = REPO / ("manifests/base" if overlay == "default" else f"manifests/overlays/{overlay}")
    plane.kubectl("apply", "--server-side", "-k", str(build))
    from_kustomize = live(plane, objects)
    plane.kubectl("delete", "-k", str(build), "--wait=true", "--ignore-not-found")
    for key, obj in from_kustomize.items():
        assert from_helm[key] == obj, f"{key} differs between Helm and kustomize as the server stores them"
