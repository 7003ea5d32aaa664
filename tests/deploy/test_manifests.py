"""kustomize overlays, generated files, examples: built by the real kustomize, checked against
the real schemas, identical to the Helm chart for equal settings, and never stale."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy_helpers import (
    OVERLAYS, REPO, VALUES_DIR, docs, kustomize, load_values, pod_specs, render_chart,
    without_helm_labels,
)
from graft import manifests_gen

BUILDS = ["manifests/base", *(f"manifests/overlays/{o}" for o in OVERLAYS)]
EXAMPLES = ["examples/finetunejob.yaml", *(f"examples/{t}.yaml" for t in manifests_gen.EXAMPLE_TARGETS)]


def test_generated_files_match_the_code_they_come_from():
    stale = manifests_gen.drifted(REPO)
    assert not stale, f"stale generated files (run `python -m graft.manifests_gen`): {stale}"


def test_generator_check_mode_reports_drift(tmp_path):
    """--check is what CI and contributors run: it must fail on a hand-edited generated file."""
    for path, text in manifests_gen.generated_files(REPO).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "examples/finetunejob.yaml").write_text((REPO / "examples/finetunejob.yaml").read_text())
    rbac = tmp_path / "manifests/base/rbac.yaml"
    rbac.write_text(rbac.read_text().replace("- watch", "- '*'", 1))
    result = subprocess.run([sys.executable, "-m", "graft.manifests_gen", "--check", "--repo", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.strip() == "drifted: manifests/base/rbac.yaml (run python -m graft.manifests_gen)"


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.controlplane
def test_kustomize_builds_and_the_api_server_accepts_every_object(build, server_errors):
    """Including the FineTuneJob CRD: the server checks it is structural and costs its CEL."""
    objects = kustomize(build)
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount"} <= {o["kind"] for o in objects}
    problems = server_errors(objects)
    assert not problems, "\n".join(problems)


@pytest.mark.controlplane
@pytest.mark.parametrize("example", EXAMPLES)
def test_the_api_server_accepts_every_example(example, server_errors):
    objects = docs((REPO / example).read_text())
    assert objects, f"{example} holds no object"
    problems = server_errors(objects)
    assert not problems, "\n".join(problems)


def _keyed(objects):
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): without_helm_labels(o)
            for o in objects}


@pytest.mark.parametrize("overlay", ["default", *OVERLAYS])
def test_helm_and_kustomize_install_the_same_objects(overlay):
    """Same settings, same cluster state: Helm only adds its release labels, the helm test
    hook pod, and leaves the Namespace to `--create-namespace`."""
    build = "manifests/base" if overlay == "default" else f"manifests/overlays/{overlay}"
    from_kustomize = _keyed(o for o in kustomize(build) if o["kind"] != "Namespace")
    from_helm = _keyed(o for o in render_chart(load_values(VALUES_DIR / f"{overlay}.yaml"))
                       if "helm.sh/hook" not in o["metadata"].get("annotations", {}))
    assert sorted(from_helm) == sorted(from_kustomize)
    for key, obj in from_kustomize.items():
        assert from_helm[key] == obj, f"{key} differs between Helm and kustomize"


def _workloads():
    """Every object that runs containers, from every source Graft ships."""
    sources = {f"kustomize {b}": kustomize(b) for b in BUILDS}
    sources |= {f"helm {p.stem}": render_chart(load_values(p)) for p in sorted(VALUES_DIR.glob("*.yaml"))}
    sources |= {e: docs((REPO / e).read_text()) for e in EXAMPLES}
    return [(f"{src}: {o['kind']} {o['metadata']['name']}", o)
            for src, objs in sources.items() for o in objs if pod_specs(o)]


RESTRICTED = {  # container field -> required value (pod-level fallback where Kubernetes has one)
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
}


def _restricted_violations(container, pod_sc, *, patch):
    """What breaks the restricted profile. A TrainJob runtime patch is merged into the
    runtime's container, so there only an explicit weakening counts."""
    sc = container.get("securityContext") or {}
    problems = []
    for field, wanted in RESTRICTED.items():
        value = sc.get(field, pod_sc.get(field) if field == "runAsNonRoot" else None)
        if value != wanted and not (patch and value is None):
            problems.append(f"{field} is {value!r}, needs {wanted!r}")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault" and not (patch and seccomp is None):
        problems.append(f"seccompProfile {seccomp!r}, needs 'RuntimeDefault'")
    drop = (sc.get("capabilities") or {}).get("drop")
    if drop != ["ALL"] and not (patch and drop is None):
        problems.append(f"capabilities.drop {drop!r}, needs ['ALL']")
    if sc.get("privileged") or (sc.get("capabilities") or {}).get("add"):
        problems.append("privileged or added capabilities")
    return problems


def test_every_container_of_every_workload_meets_the_restricted_profile():
    workloads = _workloads()
    kinds = {label.split(": ")[1].split()[0] for label, _ in workloads}
    assert {"Deployment", "Pod", "ClusterTrainingRuntime", "PyTorchJob", "RayJob", "TrainJob"} <= kinds
    problems, checked = [], set()
    for label, obj in workloads:
        for path, spec in pod_specs(obj):
            checked.add(f"{obj['kind']} {path}")
            pod_sc = spec.get("securityContext") or {}
            problems += [f"{label} {path}: {f}" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
            problems += [f"{label} {path}: hostPath volume {v['name']}" for v in spec.get("volumes", [])
                         if "hostPath" in v]
            for container in spec.get("initContainers", []) + spec["containers"]:
                problems += [f"{label} {path} container {container['name']}: {p}" for p in
                             _restricted_violations(container, pod_sc, patch="runtimePatches" in path)]
    # KubeRay's own submitter pod (K8sJobMode) is unrestricted: Graft must supply its template.
    assert "RayJob spec.submitterPodTemplate.spec" in checked
    assert not problems, "\n".join(problems)


def test_operator_args_are_flags_the_operator_accepts():
    """The Deployment's args against the real `python -m graft.operator --help`."""
    deployment = next(o for o in kustomize("manifests/base") if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "graft.operator"]
    result = subprocess.run([sys.executable, "-m", "graft.operator", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for arg in container["args"]:
        assert arg.split("=")[0] in result.stdout, f"{arg} is not a flag of python -m graft.operator"


def test_overlays_grant_only_the_installed_backends():
    def resources(build):
        role = next(o for o in kustomize(build) if o["kind"] == "ClusterRole")
        return {r for rule in role["rules"] for r in rule["resources"]}

    assert {"pytorchjobs", "trainjobs", "rayjobs"} <= resources("manifests/overlays/standalone")
    assert "rayjobs" not in resources("manifests/overlays/with-kubeflow")
    kuberay = resources("manifests/overlays/with-kuberay")
    assert "rayjobs" in kuberay and not {"pytorchjobs", "trainjobs"} & kuberay
    runtime_in = {b for b in BUILDS if any(o["kind"] == "ClusterTrainingRuntime" for o in kustomize(b))}
    assert runtime_in == {"manifests/base", "manifests/overlays/with-kubeflow"}
