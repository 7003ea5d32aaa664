"""The operator's Prometheus metrics, scraped over HTTP on loopback from the real operator
process (`--metrics-port`, as the Deployment runs it) while it reconciles FineTuneJobs on the
real control plane. The operator is shared with the other operator tests, so every counter is
compared as the change between a scrape before and after this test's jobs, and the phase gauge
against the phases of every FineTuneJob the API server lists (jobs of earlier tests still move
or go while their namespaces are deleted)."""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from tools import wait_for

pytestmark = pytest.mark.controlplane

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetunejob.yaml"
Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def phase_gauge(url: str) -> dict[str, int]:
    """`graft_finetunejobs{phase}`, phases with no jobs left out."""
    return {dict(labels)["phase"]: int(value) for (name, labels), value in scrape(url).items()
            if name == "graft_finetunejobs" and value}


def listed_phases(custom) -> Counter:
    """What `kubectl get finetunejobs -A` shows in its PHASE column, counted."""
    items = custom.list_cluster_custom_object("graft.dev", "v1alpha1", "finetunejobs")["items"]
    return Counter(phase for item in items if (phase := (item.get("status") or {}).get("phase")))


def test_metrics_count_jobs_by_phase_and_reconciles_by_result(operator, kube_api, namespace):
    custom = client.CustomObjectsApi(kube_api)

    def submit(custom, name: str, **spec_changes) -> None:
        doc = yaml.safe_load(EXAMPLE.read_text())
        doc["metadata"] = {"name": name}
        doc["spec"].update(spec_changes)
        custom.create_namespaced_custom_object("graft.dev", "v1alpha1", namespace, "finetunejobs", doc)

    def status(custom, name: str) -> dict:
        return custom.get_namespaced_custom_object("graft.dev", "v1alpha1", namespace, "finetunejobs",
                                                   name).get("status") or {}

    before = scrape(operator.metrics_url)

    def change(after: Samples, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    submit(custom, "metrics-ok")
    submit(custom, "metrics-bad", backbone={"name": "resnet18"})
    wait_for(lambda: status(custom, "metrics-ok").get("phase") == "Pending")
    wait_for(lambda: status(custom, "metrics-bad").get("phase") == "Failed")
    # The training operator's part: the child runs. Then a user edits the running job's spec.
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "metrics-ok", {
        "status": {"conditions": [{"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}]}})
    wait_for(lambda: status(custom, "metrics-ok").get("phase") == "Running")
    custom.patch_namespaced_custom_object("graft.dev", "v1alpha1", namespace, "finetunejobs", "metrics-ok",
                                          {"spec": {"training": {"batchSize": 8}}})
    after = wait_for(lambda: (samples := scrape(operator.metrics_url))
                     and change(samples, "graft_reconcile_total", handler="spec_changed", result="rejected")
                     and samples)

    def gauge_matches_listing() -> Counter | None:
        listed = listed_phases(custom)
        return listed if phase_gauge(operator.metrics_url) == dict(listed) else None

    listed = wait_for(gauge_matches_listing, explain=lambda: (
        f"listed {dict(listed_phases(custom))}, gauge {phase_gauge(operator.metrics_url)}"))
    assert listed["Running"] >= 1 and listed["Failed"] >= 1  # this test's two jobs are among them
    assert change(after, "graft_reconcile_total", handler="create_children", result="created") == 1
    assert change(after, "graft_reconcile_total", handler="create_children", result="invalid") == 1
    assert change(after, "graft_reconcile_total", handler="spec_changed", result="rejected") == 1
    assert change(after, "graft_children_created_total", kind="PyTorchJob") == 1
    assert change(after, "graft_children_created_total", kind="ConfigMap") == 1
    assert change(after, "graft_reconcile_seconds_count", handler="create_children") == 2
    assert change(after, "graft_reconcile_seconds_count", handler="spec_changed") == 1
