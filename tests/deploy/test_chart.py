"""The Helm chart, rendered and linted by the real Helm engine for every values file a platform
team might write, and refusing the values it must refuse with the offending key named."""

from __future__ import annotations

import json

import pytest
import yaml

import graft
from deploy_helpers import CHART, REPO, load_values, render_chart, values_files


@pytest.mark.parametrize("values_file", values_files(), ids=lambda p: p.stem)
@pytest.mark.controlplane
def test_chart_lints_clean_and_the_api_server_accepts_every_object(values_file, server_errors):
    import helm_python as helm

    values = load_values(values_file)
    lint = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    errors = [m for m in lint["messages"] if m["severity"] >= 2] + list(lint["errors"])
    assert not errors, f"helm lint --strict with {values_file.name}: {errors}"

    objects = render_chart(values)
    problems = server_errors([obj for obj in objects if obj["kind"] != "ServiceMonitor"])
    assert not problems, "\n".join(problems)


def test_servicemonitor_scrapes_the_port_the_operator_serves_metrics_on():
    """No ServiceMonitor CRD is available here to validate against: follow what it points at,
    ServiceMonitor -> Service port -> container port -> the operator's --metrics-port."""
    objects = render_chart(load_values(REPO / "tests/deploy/values/production.yaml"))
    by_kind = {o["kind"]: o for o in objects}
    monitor, service = by_kind["ServiceMonitor"], by_kind["Service"]
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    service_port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    container_port = next(p for p in container["ports"] if p["name"] == service_port["targetPort"])
    assert f"--metrics-port={container_port['containerPort']}" in container["args"]
    assert container_port["containerPort"] != container["livenessProbe"]["httpGet"]["port"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_networkpolicy_lets_the_documented_scrapers_reach_the_metrics_port():
    """The release namespace reaches probe and metrics ports; metricsFrom peers only metrics."""
    objects = render_chart(load_values(REPO / "tests/deploy/values/production.yaml"))
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    allowed = [(rule["from"], {p["port"] for p in rule["ports"]}) for rule in policy["spec"]["ingress"]]
    assert allowed == [
        ([{"podSelector": {}}], {"http", "metrics"}),
        ([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}], {"metrics"}),
    ]


BAD_VALUES = [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"image": {"repository": "x/y", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"backends": {"pytorchjobs": True}}, "/backends"),
    ({"rbac": {"create": True, "clusterAdmin": True}}, "/rbac"),
    ({"typoAtTopLevel": 1}, "typoAtTopLevel"),
    # a secret's value in plain text next to a secretKeyRef, or a non-secret source
    ({"extraEnv": [{"name": "T", "value": "s3cr3t", "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}]},
     "/extraEnv/0"),
    ({"extraEnv": [{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "a", "key": "b"}}}]},
     "/extraEnv/0/valueFrom"),
    ({"networkPolicy": {"enabled": True, "apiServerPorts": [70000]}}, "/networkPolicy/apiServerPorts/0"),
    ({"serviceMonitor": {"enabled": True, "interval": "often"}}, "/serviceMonitor/interval"),
    ({"metrics": {"port": 0}}, "/metrics/port"),
    ({"networkPolicy": {"enabled": True, "metricsFrom": [{"namespaces": ["monitoring"]}]}},
     "/networkPolicy/metricsFrom/0"),
    ({"watchNamespace": "Not_A_Namespace"}, "/watchNamespace"),
    ({"resources": {"limits": {"cpu": "lots"}}}, "/resources/limits/cpu"),
]


@pytest.mark.parametrize(("values", "path"), BAD_VALUES, ids=[p for _, p in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_key(values, path):
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as refused:
        render_chart(values)
    assert path in str(refused.value)


def test_a_pdb_that_would_block_every_drain_is_refused_with_the_reason():
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="minAvailable .* must be below replicaCount"):
        render_chart({"podDisruptionBudget": {"enabled": True, "minAvailable": 1}})


def test_a_metrics_port_equal_to_the_probe_port_is_refused_with_the_reason():
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="metrics.port .* must differ from probePort"):
        render_chart({"metrics": {"port": 8080}})


def test_every_value_is_documented_and_covered_by_the_schema():
    """values.yaml says what each key does (a comment line above it), and the schema knows it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        previous = lines[index - 1].strip()
        if not previous.startswith("#"):
            undocumented.append(stripped)
    assert not undocumented, f"values without a comment line above them: {undocumented}"

    def check(values, node, where):
        assert node.get("additionalProperties") is False or "$ref" in node, f"{where} accepts unknown keys"
        for key, value in values.items():
            assert key in node["properties"], f"{where}.{key} is missing from values.schema.json"
            sub = node["properties"][key]
            sub = schema["definitions"][sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
            if isinstance(value, dict) and sub.get("properties"):
                check(value, sub, f"{where}.{key}")

    check(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "values")


def test_chart_version_and_images_follow_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"  # Helm 3 and 4
    assert chart["version"] == chart["appVersion"] == graft.__version__
    deployment = next(o for o in render_chart({}) if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{graft.__version__}")


def test_watch_namespace_moves_namespaced_permissions_into_a_role():
    objects = render_chart(load_values(REPO / "tests/deploy/values/namespaced.yaml"))
    by_kind = {o["kind"]: o for o in objects}
    cluster_resources = {r for rule in by_kind["ClusterRole"]["rules"] for r in rule["resources"]}
    assert cluster_resources == {"namespaces", "customresourcedefinitions"}
    role = by_kind["Role"]
    assert role["metadata"]["namespace"] == "ml-team"
    role_resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"finetunejobs", "pytorchjobs", "trainjobs", "configmaps"} <= role_resources
    assert "rayjobs" not in role_resources  # backends.rayjob: false
    assert by_kind["RoleBinding"]["subjects"][0] == {
        "kind": "ServiceAccount", "name": "graft-operator-sa", "namespace": "graft-system"}
    assert by_kind["KopfPeering"]["metadata"]["namespace"] == "ml-team"
    args = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml-team" in args
    assert "ServiceAccount" not in by_kind  # serviceAccount.create: false


def test_helm_test_hook_probes_the_operator_liveness_and_metrics_endpoints():
    objects = render_chart({})
    pod = next(o for o in objects if o["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    compile(script, "helm-test", "exec")
    assert 'service = "http://graft-operator.graft-system.svc"' in script
    assert '{service}:8080/healthz' in script and '{service}:9090/metrics", "graft_finetunejobs"' in script
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
