"""Strict manifest checks: custom resources against their real CRD schemas, core kinds against
the Kubernetes OpenAPI (kubernetes-validate).

Plain jsonschema misses two things a real API server / `kubectl apply --validate=strict` does:
unknown fields (rejected here, honouring x-kubernetes-preserve-unknown-fields) and
x-kubernetes-int-or-string. Both are added by rewriting each CRD schema once at load time.
CEL rules (x-kubernetes-validations) are not evaluated.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError
from jsonschema.validators import extend

Schema = dict[str, Any]

# Root metadata of a custom resource is ObjectMeta, which CRD schemas leave as a bare object.
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "uid": {"type": "string"},
                    "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"},
                },
            },
        },
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": "string"},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array"},
    },
}


def _int_or_string(validator, enabled, instance, schema):
    if enabled and "anyOf" not in schema and (isinstance(instance, bool) or not isinstance(instance, (int, str))):
        yield ValidationError(f"{instance!r} is neither an integer nor a string")


_KubeValidator = extend(Draft7Validator, {"x-kubernetes-int-or-string": _int_or_string})


def _strict(schema: Schema, *, root: bool = False) -> Schema:
    """Copy of a structural schema in which every unknown field is a validation error."""
    out = dict(schema)
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(exclusive) is True:  # OpenAPI v3.0 boolean form → draft 7 numeric form
            out[exclusive] = out.pop(bound)
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {name: _strict(sub) for name, sub in out[key].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_strict(sub) for sub in out[key]]
    if root:
        out.setdefault("properties", {})
        out["properties"] = {**out["properties"], "metadata": copy.deepcopy(OBJECT_META)}
    closed = (
        out.get("type") == "object"
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    )
    if closed:
        out["additionalProperties"] = False
    return out


def _path(error: ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(root)"


class CrdSchemas:
    """Strict validators for every served version of a set of CRDs, keyed by apiVersion and kind."""

    def __init__(self, crds: Iterable[dict[str, Any]]):
        self._validators: dict[tuple[str, str], Draft7Validator] = {}
        for crd in crds:
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = _strict(version["schema"]["openAPIV3Schema"], root=True)
                self._validators[(f"{group}/{version['name']}", kind)] = _KubeValidator(schema)

    @classmethod
    def from_dir(cls, directory: str | Path) -> CrdSchemas:
        """Load every CustomResourceDefinition found in the YAML files of `directory`."""
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crds = []
        for path in sorted(Path(directory).glob("*.y*ml")):
            for doc in yaml.load_all(path.read_text(), Loader=loader):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    crds.append(doc)
        return cls(crds)

    def knows(self, obj: dict[str, Any]) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in self._validators

    def errors(self, obj: dict[str, Any]) -> list[str]:
        """One line per problem, `<kind> <name>: <path>: <reason>`; empty when the object is valid."""
        key = (obj.get("apiVersion"), obj.get("kind"))
        label = f"{key[1]} {obj.get('metadata', {}).get('name', '?')}"
        validator = self._validators.get(key)
        if validator is None:
            return [f"{label}: no CRD loaded for apiVersion {key[0]!r} kind {key[1]!r}"]
        found = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
        return [f"{label}: {_path(e)}: {_reason(e)}" for e in found]


def _reason(error: ValidationError) -> str:
    if error.validator == "anyOf" and error.context:
        return "; ".join(sorted({sub.message for sub in error.context}))
    return error.message


def core_errors(obj: dict[str, Any], kubernetes_version: str = "1.30.0") -> list[str]:
    """Strict check of a core object (ConfigMap, PVC, ...); a kind without a schema is an error."""
    import kubernetes_validate  # heavy (loads OpenAPI schemas): only when a check runs

    label = f"{obj.get('kind')} {obj.get('metadata', {}).get('name', '?')}"
    try:
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{label}: no Kubernetes {kubernetes_version} schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{label}: {'.'.join(str(p) for p in exc.path) or '(root)'}: {exc.message}"]
    return []


def manifest_errors(obj: dict[str, Any], crds: CrdSchemas) -> list[str]:
    """Route an object to its CRD schema when one is loaded, else to the core schemas."""
    return crds.errors(obj) if crds.knows(obj) else core_errors(obj)


def structural_errors(schema: Schema, path: str = "") -> list[str]:
    """Problems that make the API server refuse a CRD schema as non-structural (main rules)."""
    problems: list[str] = []
    where = path or "(root)"
    special = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in schema and not special:
        problems.append(f"{where}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties together")
    for banned in ("$ref", "$defs", "const", "prefixItems", "examples"):
        if banned in schema:
            problems.append(f"{where}: {banned} is not allowed in a CRD schema")
    for key in ("anyOf", "allOf", "oneOf"):
        if not path and key in schema:
            problems.append(f"(root): {key} at the root")
        for branch in schema.get(key, []):
            if not schema.get("x-kubernetes-int-or-string"):
                for bad in ("type", "default", "nullable", "description", "additionalProperties"):
                    if bad in branch:
                        problems.append(f"{where}: {key} branch sets {bad}")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_errors(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        problems += structural_errors(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_errors(schema["additionalProperties"], f"{path}.*")
    return problems
