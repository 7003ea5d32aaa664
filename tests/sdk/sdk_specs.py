"""The spec the SDK tests submit (a module of its own: test directories each have a conftest)."""

from __future__ import annotations

from pathlib import Path

import yaml

# A tiny randomly initialised timm test model on 16 px crops of the real sklearn digits: the
# point is real processes and real DDP, not accuracy.
TINY_JOB = {
    "apiVersion": "graft.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tiny-digits"},
    "spec": {
        "task": "image-classification",
        "backbone": {"name": "timm/test_resnet"},
        "data": {"format": "imagefolder", "train": "builtin://sklearn-digits?classes=0-3",
                 "imageSize": 16, "limit": 64},
        "strategy": {"phases": [{"name": "head", "epochs": 1, "lr": 0.01}]},
        "training": {"batchSize": 16},
        "resources": {"nodes": 2, "procsPerNode": 1},
    },
}


def write_spec(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
