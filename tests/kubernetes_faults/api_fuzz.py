"""Generated FineTuneJob bodies (tests/render/spec_fuzz.py's documents: the example spec with
0-3 mutations) sent to the real API server as `kubectl apply` sends them (fieldValidation=
Strict), and the promise each must keep: the server refuses what the CRD schema and CEL rules
refuse (and nothing is stored); of the rest, the operator marks Failed, naming the field, every
job Graft itself refuses (and creates no child for it), and gives every other job its child.
Shared by test_api_fuzz.py and bench/fuzz_api.py."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "render"))

from spec_fuzz import documents  # noqa: E402,F401  (re-exported for the callers)

from graft.operator.reconcile import desired_children, job_from_body  # noqa: E402
from graft.render import RenderError  # noqa: E402
from graft.spec import SpecError  # noqa: E402

NAMED = re.compile(r"(spec\.[\w.\[\]-]+|\(document\)|metadata\.[\w.]+)")


def apply(admin, ns: str, document: dict, index: int) -> str | None:
    """Create one generated body; its name when the server stored it, None when refused."""
    doc = copy.deepcopy(document)
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    doc["metadata"] = {**meta, "name": f"fuzz-{index}", "namespace": ns}
    try:
        admin.custom.create_namespaced_custom_object("graft.dev", "v1alpha1", ns, "finetunejobs", doc,
                                                     field_validation="Strict")
    except (ApiException, ValueError) as exc:
        if isinstance(exc, ApiException):
            assert exc.status in (400, 422), f"fuzz-{index}: {exc.status} {exc.reason}"
        return None
    return doc["metadata"]["name"]


def graft_refuses(body: dict) -> bool:
    """What the operator's pure decision says of a stored body."""
    try:
        desired_children(body, job_from_body(body))
    except (SpecError, RenderError):
        return True
    return False


def undecided(admin, ns: str, most: int = 5) -> str:
    """The jobs still waiting for the operator's decision (what a timed-out wait names)."""
    jobs = admin.custom.list_namespaced_custom_object("graft.dev", "v1alpha1", ns, "finetunejobs")["items"]
    waiting = [job for job in jobs if (job.get("status") or {}).get("phase") != "Failed"
               and not (job.get("status") or {}).get("child")]
    return f"{len(waiting)} undecided, e.g. " + "; ".join(
        f"{job['metadata']['name']} (Graft refuses: {graft_refuses(job)}, status {job.get('status')}, "
        f"spec {job.get('spec')})" for job in waiting[:most])


def verdicts(admin, ns: str) -> dict[str, str] | None:
    """Each stored job's outcome once the operator has decided all: 'failed' (Failed, the field
    named, no child) or 'child'; None while any is undecided. Asserts the promise."""
    jobs = admin.custom.list_namespaced_custom_object("graft.dev", "v1alpha1", ns, "finetunejobs")["items"]
    kids = {c["metadata"]["name"] for c in
            admin.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"]}
    kids |= {c["metadata"]["name"] for c in
             admin.custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]}
    kids |= {c["metadata"]["name"] for c in
             admin.custom.list_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", ns, "trainjobs")["items"]}
    out = {}
    for job in jobs:
        name, status = job["metadata"]["name"], job.get("status") or {}
        if graft_refuses(job):
            if status.get("phase") != "Failed":
                return None
            assert name not in kids, f"{name}: a child was created for an invalid job"
            assert NAMED.search(status.get("message", "")), f"{name}: {status.get('message')}"
            out[name] = "failed"
        else:
            # Graft accepts it, so the operator failing it means the server refused the child
            # Graft rendered: a renderer bug, said at once rather than waited out
            assert status.get("phase") != "Failed", f"{name}: {status.get('message')}"
            if not status.get("child") or name not in kids:
                return None
            out[name] = "child"
    return out
