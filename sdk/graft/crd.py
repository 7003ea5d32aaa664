"""The FineTuneJob CustomResourceDefinition, generated from the pydantic spec's JSON Schema so
the cluster and the SDK accept exactly the same documents (one source of truth).

pydantic emits JSON Schema 2020-12 ($ref/$defs, anyOf-with-null, const, prefixItems, numeric
exclusive bounds); the API server wants a structural OpenAPI v3 schema. `_structural` converts
one into the other; the status schema is what the operator writes.
"""

from __future__ import annotations

import json
from typing import Any

from graft.spec import json_schema
from graft.spec.contracts import FINETUNEJOB

Schema = dict[str, Any]

GROUP, VERSION, PLURAL, KIND = FINETUNEJOB
PHASES = ["Pending", "Running", "Succeeded", "Failed", "Suspended"]
_DROPPED = {"title", "examples", "$schema", "$id", "$defs"}

_TIME = {"type": "string", "format": "date-time"}
_STRING, _NUMBER, _INTEGER = {"type": "string"}, {"type": "number"}, {"type": "integer"}


def _object(description: str | None = None, required: list[str] | None = None, **properties: Schema) -> Schema:
    extra = {"description": description} if description else {}
    return {"type": "object", **extra, **({"required": required} if required else {}), "properties": properties}


STATUS_SCHEMA: Schema = _object(
    "Written by the Graft operator from the child job and the trainer's progress.",
    phase={"type": "string", "enum": PHASES},
    message={"type": "string", "description": "Why the job is in this phase, in words."},
    observedGeneration={"type": "integer", "format": "int64"},
    conditions={
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": _object(required=["type", "status"], type=_STRING,
                         status={"type": "string", "enum": ["True", "False", "Unknown"]},
                         reason=_STRING, message=_STRING, lastTransitionTime=_TIME),
    },
    startTime=_TIME,
    completionTime=_TIME,
    restarts={"type": "integer", "minimum": 0},
    lastCheckpoint={"type": "string", "description": "Newest checkpoint dir written."},
    bestMetric=_object(name=_STRING, value=_NUMBER, epoch=_INTEGER),
    progress=_object(
        "The trainer's latest `graft-progress` line.",
        summary={"type": "string", "description": "e.g. '3/10 epochs' (printer column)."},
        epoch=_INTEGER, epochs=_INTEGER, trainLoss=_NUMBER, valLoss=_NUMBER, valAccuracy=_NUMBER,
        valMacroF1=_NUMBER,
    ),
    child=_object("The PyTorchJob, RayJob or TrainJob this job created.",
                  apiVersion=_STRING, kind=_STRING, name=_STRING),
)

PRINTER_COLUMNS = [
    {"name": "Backend", "type": "string", "jsonPath": ".spec.backend"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
    {"name": "Accuracy", "type": "number", "jsonPath": ".status.progress.valAccuracy"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def finetunejob_crd() -> dict[str, Any]:
    """CRD `finetunejobs.graft.dev` (v1alpha1, namespaced, short name `ftj`)."""
    source = json_schema()
    spec_schema = _structural(source["properties"]["spec"], source["$defs"])
    root = {
        "type": "object",
        "description": source.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": STATUS_SCHEMA,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "graft"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ftj"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def _structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """One pydantic schema node → structural OpenAPI v3 (types everywhere, no refs, no unions)."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        return _union(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "prefixItems":
            out["items"] = _structural(value[0], defs)  # pydantic tuples here are homogeneous
        elif key in ("items", "additionalProperties"):
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
            elif key == "items":
                out[key] = value
        else:
            out[key] = value
    if out.get("additionalProperties") == {"x-kubernetes-preserve-unknown-fields": True}:
        # A free-form map of mixed scalars (backbone.options): kept as given, checked by parse_spec.
        del out["additionalProperties"]
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and "properties" in out:
        out.pop("additionalProperties", None)  # closed by pruning; structural schemas forbid both
    return out


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a $ref; keys set next to it (description, default) win over the definition's."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    return {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}


def _union(node: Schema, defs: dict[str, Schema]) -> Schema:
    """anyOf → nullable (X | None), int-or-string (int | 'all'), or free-form (mixed scalars)."""
    branches = [_structural(b, defs) for b in node["anyOf"] if b != {"type": "null"}]
    nullable = len(branches) < len(node["anyOf"])
    outer = _structural({k: v for k, v in node.items() if k != "anyOf"}, defs)
    if len(branches) == 1:
        out = {**branches[0], **outer}
    elif {b.get("type") for b in branches} == {"integer", "string"} and len(branches) == 2:
        out = {**outer, **_int_or_string(branches)}
    else:
        out = {**outer, "x-kubernetes-preserve-unknown-fields": True}
    if nullable:
        out["nullable"] = True
    return out


def _int_or_string(branches: list[Schema]) -> Schema:
    """The API server allows only plain integer/string branches; constraints move into CEL."""
    by_type = {b["type"]: b for b in branches}
    checks = {"int": _cel(by_type["integer"]), "string": _cel(by_type["string"])}
    out: Schema = {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }
    if checks["int"] != "true" or checks["string"] != "true":
        out["x-kubernetes-validations"] = [
            {
                "rule": f"type(self) == int ? {checks['int']} : {checks['string']}",
                "message": _describe(by_type),
            }
        ]
    return out


def _cel(branch: Schema) -> str:
    terms = []
    if "minimum" in branch:
        terms.append(f"self >= {branch['minimum']}")
    if "maximum" in branch:
        terms.append(f"self <= {branch['maximum']}")
    if "enum" in branch:
        terms.append(f"self in {json.dumps(branch['enum'])}")
    return " && ".join(terms) or "true"


def _describe(by_type: dict[str, Schema]) -> str:
    number, text = by_type["integer"], by_type["string"]
    parts = ["an integer" + (f" >= {number['minimum']}" if "minimum" in number else "")]
    if "enum" in text:
        parts.append(" or ".join(repr(v) for v in text["enum"]))
    else:
        parts.append("a string")
    return "must be " + " or ".join(parts)
