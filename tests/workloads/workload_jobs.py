"""Small real jobs for the workload tests: resnet10t on the real scikit-learn digits."""

from __future__ import annotations

from pathlib import Path

from graft.spec import parse_spec
from spec_docs import merge

IMAGE_SIZE = 16  # the 8x8 scans upscaled; small enough for 2 CPU cores


def digits_job(output: Path, weights: Path | None, **spec):
    """resnet10t on the real digits 5-9 (the target task), head only, unless `spec` says more."""
    base = {
        "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "workload-test"},
        "spec": {
            "task": "image-classification",
            "backbone": {"name": "timm/resnet10t", **({"weights": str(weights)} if weights else {})},
            "data": {"format": "imagefolder", "train": "builtin://sklearn-digits?classes=5-9",
                     "imageSize": IMAGE_SIZE, "validationFraction": 0.2},
            "strategy": {"phases": [{"name": "head-only", "epochs": 3, "lr": 1.0e-2}]},
            "training": {"batchSize": 32, "scheduler": {"name": "constant"}},
            "checkpoint": {"keepLast": 1},
            "output": {"dir": str(output)},
        },
    }
    return parse_spec(merge(base, {"spec": spec}))
