"""Generated FineTuneJob documents, valid and broken, and the promise every one of them must
keep: a valid spec renders for every target (or is refused naming the setting), an invalid one
is refused with one line per problem naming the field, no other exception escapes, and
nothing is written or submitted. Shared by tests/render/test_spec_fuzz.py and bench/fuzz_spec.py."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from graft.api import Client
from graft.render import RenderError, render
from graft.spec import SpecError, parse_spec

TARGETS = ("pytorchjob", "rayjob", "trainjob")
# "<field path>: <what is wrong and the fix>", e.g. "spec.training.precision: Input should be ..."
PROBLEM = re.compile(r"^(\(document\)|[\w.\[\]-]+): \S")
key = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True)  # what a typo or a stray field looks like

BASE: dict[str, Any] = {
    "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "fuzz-job", "labels": {"team": "ml"}},
    "spec": {
        "task": "image-classification",
        "backbone": {"name": "timm/resnet18", "weights": "/data/resnet18.safetensors", "options": {"dropRate": 0.1}},
        "head": {"hiddenSizes": [256], "dropout": 0.2},
        "data": {"format": "imagefolder", "train": "/data/train", "validation": "/data/val", "imageSize": 64,
                 "augmentations": [{"name": "horizontalFlip"}, {"name": "randomResizedCrop", "scale": [0.7, 1.0]}],
                 "maxBadSamples": 2, "balance": "sampler"},
        "strategy": {"phases": [{"name": "head", "epochs": 2, "lr": 1e-3},
                                {"name": "finetune", "epochs": 2, "lr": 1e-5, "unfreeze": 2, "layerDecay": {"factor": 0.8}}]},
        "training": {"batchSize": 32, "precision": "bf16", "earlyStopping": {"metric": "val_accuracy", "patience": 3},
                     "stallTimeoutSeconds": 300},
        "resources": {"nodes": 2, "procsPerNode": 2, "gpusPerNode": 2, "cpu": "4", "memory": "16Gi"},
        "checkpoint": {"dir": "/ckpt/fuzz", "everySteps": 100, "keepLast": 2, "gracePeriodSeconds": 25},
        "kubernetes": {"env": [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}],
                       "volumes": [{"name": "ckpt", "mountPath": "/ckpt", "persistentVolumeClaim": "fuzz-ckpt"}]},
    },
}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.integers(), max_size=2),
    st.sampled_from(["fp64", "all", "webdataset", "hf/", "timm/", "-1", "1e9", "UPPER", "a" * 80, "auto", "never"]),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into the document."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def documents(draw) -> dict:
    """The base spec with 0-3 mutations: a value replaced by junk, a key deleted, an unknown or
    misspelt key added."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        parent, leaf = _parent(doc, path), path[-1]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "typo"]))
        if action == "replace":
            parent[leaf] = draw(junk)
        elif action == "delete":
            del parent[leaf]
        elif isinstance(parent, dict) and action == "add":
            parent[draw(key)] = draw(junk)
        elif isinstance(parent, dict) and isinstance(leaf, str) and len(leaf) > 2:
            parent[leaf[:-1] + leaf[-1].swapcase()] = parent.pop(leaf)
    return doc


def check(document: dict, home: Path) -> str:
    """Keep the promise for one document; 'valid' or 'invalid'."""
    try:
        job = parse_spec(document)
    except SpecError as exc:
        assert exc.problems and all(PROBLEM.match(p) for p in exc.problems), exc.problems
        try:
            Client("local", home=home).submit(document)
        except SpecError:
            pass
        else:
            raise AssertionError("an invalid spec was submitted")
        assert not any(home.iterdir()), "an invalid spec left files behind"
        return "invalid"
    for target in TARGETS:
        try:
            render(job, target)
        except RenderError as exc:
            assert ": " in str(exc) and "use target" in str(exc)
    return "valid"
