"""The job every Ray test trains: timm's `test_resnet` (373 k parameters) RANDOMLY INITIALISED,
fine-tuned in full on 32 px images of the real scikit-learn digits. The point is the Ray Train
path (two real worker processes, gloo DDP, reports, checkpoints, restarts), not transfer quality.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from graft.spec import FineTuneJob, parse_spec

EPOCHS = 3
TINY_RAY_JOB = {
    "apiVersion": "graft.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "ray-digits"},
    "spec": {
        "task": "image-classification",
        "backbone": {"name": "timm/test_resnet"},
        "data": {"format": "imagefolder", "train": "builtin://sklearn-digits", "imageSize": 32,
                 "limit": 480},
        "strategy": {"phases": [{"name": "full", "epochs": EPOCHS, "lr": 0.003, "unfreeze": "all"}]},
        "training": {"batchSize": 32, "seed": 0},
        "resources": {"procsPerNode": 2},
        "checkpoint": {"keepLast": 2},
        "backend": "rayjob",
        "ray": {"maxFailures": 1},
    },
}


def tiny_job(name: str, output: Path, **spec_overrides) -> FineTuneJob:
    document = copy.deepcopy(TINY_RAY_JOB)
    document["metadata"]["name"] = name
    document["spec"]["output"] = {"dir": str(output)}
    document["spec"].update(spec_overrides)
    return parse_spec(document)


def write_spec(job: FineTuneJob, path: Path) -> Path:
    path.write_text(yaml.safe_dump(job.to_document(), sort_keys=False))
    return path
