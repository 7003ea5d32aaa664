"""What the operator decides for a FineTuneJob, as pure functions of the object's body: the
validated job, the children it should own, and what a spec edit means. No API calls here."""

from __future__ import annotations

from typing import Any

from graft.jobstatus import suspend_patch  # noqa: F401 (the operator's handlers patch with it)
from graft.render import render
from graft.spec import FineTuneJob, parse_spec
from graft.spec.contracts import JOB_LABEL, OPERATOR_ANNOTATION_PREFIX, SUSPEND_PATHS  # noqa: F401

# The metadata keys a FineTuneJob document may carry; the API server adds uid, resourceVersion…
DOCUMENT_METADATA = ("name", "namespace", "labels", "annotations")
# Annotations that tools keep on the stored object, not the user's: never copied to children.
TOOL_ANNOTATION_PREFIXES = ("kubectl.kubernetes.io/", f"{OPERATOR_ANNOTATION_PREFIX}/")


def job_from_body(body: dict[str, Any]) -> FineTuneJob:
    """Validate the stored object as a document (raises graft.spec.SpecError).

    Server-set metadata (uid, resourceVersion, managedFields…) and status are not part of the
    document, so they are dropped before validation; everything the user wrote is kept.
    """
    metadata = dict(body.get("metadata") or {})
    metadata["annotations"] = {
        key: value
        for key, value in (metadata.get("annotations") or {}).items()
        if not key.startswith(TOOL_ANNOTATION_PREFIXES)
    }
    document = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: metadata[k] for k in DOCUMENT_METADATA if metadata.get(k) is not None},
        "spec": body.get("spec"),
    }
    return parse_spec(document, source=f"FineTuneJob {metadata.get('namespace')}/{metadata.get('name')}")


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    """Makes every child garbage-collected with its FineTuneJob."""
    metadata = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_children(body: dict[str, Any], job: FineTuneJob) -> list[dict[str, Any]]:
    """[ConfigMap, child job], rendered by the SDK's renderer, in the FineTuneJob's namespace."""
    objects = render(job, job.spec.backend, owner=owner_reference(body))
    for obj in objects:
        obj["metadata"].setdefault("namespace", body["metadata"]["namespace"])
    return objects


def owned_by(obj: dict[str, Any], body: dict[str, Any]) -> bool:
    uid = body["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def changed_spec_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every spec field that differs (added, removed or changed)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths: list[str] = []
        for key in sorted(set(old) | set(new)):
            paths += changed_spec_paths(old.get(key), new.get(key), f"{prefix}{key}.")
        return paths
    return [prefix.rstrip(".")] if old != new else []
