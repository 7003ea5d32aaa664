"""The FineTuneJob spec: parse, validate and explain, with no I/O beyond reading the text given.

Every consumer (CLI, SDK, renderers, operator, trainer) goes through `parse_spec`, so an
invalid document is rejected with the same messages everywhere.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from graft.spec.models import (
    API_VERSION,
    KIND,
    Augmentation,
    Backbone,
    Checkpointing,
    Data,
    DomainAdaptation,
    EarlyStopping,
    EnvVar,
    FineTuneJob,
    FineTuneJobSpec,
    Head,
    Kubernetes,
    LayerDecay,
    ObjectMeta,
    Optimizer,
    Output,
    Phase,
    Ray,
    Resources,
    Scheduler,
    SecretKeyRef,
    Strategy,
    Training,
    Volume,
)

__all__ = [
    "API_VERSION", "KIND", "Augmentation", "Backbone", "Checkpointing", "Data",
    "DomainAdaptation", "EarlyStopping", "EnvVar", "FineTuneJob", "FineTuneJobSpec", "Head",
    "Kubernetes", "LayerDecay", "ObjectMeta", "Optimizer", "Output", "Phase", "Ray",
    "Resources", "Scheduler", "SecretKeyRef", "SpecError", "Strategy", "Training", "Volume",
    "json_schema", "load_spec", "parse_spec",
]


class SpecError(ValueError):
    """An invalid FineTuneJob: one line per problem, each naming the field and the fix."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(
            f"invalid FineTuneJob{where} ({len(problems)} problem{'s' * (len(problems) != 1)}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def parse_spec(document: str | dict[str, Any], source: str | None = None) -> FineTuneJob:
    """Validate a FineTuneJob given as YAML/JSON text or an already-parsed mapping."""
    if isinstance(document, str):
        try:
            document = yaml.safe_load(document)
        except yaml.YAMLError as exc:
            raise SpecError([f"not valid YAML: {exc}"], source) from None
    if not isinstance(document, dict):
        raise SpecError(
            ["the document must be a mapping with apiVersion, kind, metadata and spec"], source
        )
    try:
        return FineTuneJob.model_validate(document)
    except ValidationError as exc:
        raise SpecError(_problems(exc.errors()), source) from None


def load_spec(path: str | Path) -> FineTuneJob:
    """Read and validate a spec file (the one I/O helper, for CLI and trainer convenience)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([f"cannot read the spec file: {exc.strerror}"], str(path)) from None
    return parse_spec(text, str(path))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the document, keyed as users write it (camelCase)."""
    schema = FineTuneJob.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://graft.dev/schemas/finetunejob-v1alpha1.json"
    return schema


# What pydantic appends to a location inside a union: the member tried, not a field.
_UNION_MEMBER = re.compile(r"^(constrained-\w+|[\w-]+\[.*\]|int|float|str|bool|none|list|dict|tuple)$")


def _problems(errors: list[dict[str, Any]]) -> list[str]:
    """One line per field: a union's alternatives (unfreeze: an integer or 'all') are one
    problem at the field, not one per member at made-up sub-fields."""
    by_field: dict[tuple, list[str]] = {}
    for error in errors:
        loc = tuple(p for p in error["loc"] if isinstance(p, int) or not _UNION_MEMBER.match(str(p)))
        by_field.setdefault(loc, []).append(_explain({**error, "loc": loc}))
    lines = []
    for loc, explained in by_field.items():
        prefix = (".".join(str(part) for part in loc) or "(document)") + ": "
        messages = [line.removeprefix(prefix) for line in explained]
        alternatives = [re.sub(r" \(got .*\)$", "", m) for m in messages[:-1]] + messages[-1:]
        lines.append(prefix + "; or ".join(dict.fromkeys(alternatives)))
    return lines


def _explain(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(document)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown field; {_did_you_mean(error['loc'])}"
    if kind == "missing":
        return f"{path}: required field is missing; add it"
    message = error["msg"].removeprefix("Value error, ")
    if kind in {"literal_error", "enum"}:
        return f"{path}: {message} (got {json.dumps(error.get('input'))})"
    if "input" in error and not isinstance(error["input"], (dict, list)):
        return f"{path}: {message} (got {json.dumps(error['input'], default=str)})"
    return f"{path}: {message}"


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    allowed = _allowed_keys(loc[:-1])
    if not allowed:
        return "remove it"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"remove it (allowed here: {', '.join(sorted(allowed))})"


def _allowed_keys(parent_loc: tuple[Any, ...]) -> list[str]:
    """Walk the model tree along an error location to list the keys valid at that level."""
    model: Any = FineTuneJob
    for part in parent_loc:
        if isinstance(part, int):
            continue
        field = _field_by_key(model, str(part))
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _field_by_key(model: type[BaseModel], key: str):
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
