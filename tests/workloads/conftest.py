"""Workload tests: small slices of the real digits and a source model trained once.

The vision backbone here is *pretrained the honest way*: a session fixture trains timm
resnet10t FROM RANDOM INIT on the real scikit-learn digits 0-4 (the source task), and the
transfer tests graft new heads onto its export for digits 5-9 (a task it never saw).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workload_jobs import digits_job


@pytest.fixture(scope="session", autouse=True)
def graft_cache(tmp_path_factory) -> Path:
    """Builtin datasets and features go to a temporary cache, never the user's."""
    cache = os.environ.get("GRAFT_CACHE") or str(tmp_path_factory.mktemp("graft-cache"))
    os.environ["GRAFT_CACHE"] = cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    return Path(cache)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Small CPU models run faster on one intra-op thread than on two contended ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def source_weights(tmp_path_factory) -> Path:
    """resnet10t trained from random init on real digits 0-4; its exported safetensors."""
    from graft_trainer.loop import fit

    output = tmp_path_factory.mktemp("digits-source")
    job = digits_job(
        output, None,
        data={"train": "builtin://sklearn-digits?classes=0-4"},
        strategy={"phases": [{"name": "from-scratch", "epochs": 2, "lr": 3.0e-3, "unfreeze": "all"}]},
        training={"scheduler": {"name": "cosine"}},
    )
    summary = fit(job)
    assert summary["best_val_accuracy"] > 0.9, "the source model must be a real, trained backbone"
    return output / "model" / "model.safetensors"
