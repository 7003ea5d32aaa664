"""training.channelsLast and training.compile change how fast a model trains, never what it
learns: the same job trains to the same losses with and without them. Backbones are RANDOMLY
INITIALISED (timm resnet10t on 16 px digits)."""

from __future__ import annotations

import json

import pytest
import torch

from graft.spec import SpecError
from graft_trainer.loop import fit
from graft_trainer.models import build_model
from trainer_jobs import digits_doc, job_of


def _history(tmp_path, name: str, **training) -> list[dict]:
    doc = digits_doc(tmp_path / name, training={"batchSize": 16, "scheduler": {"name": "constant"}, **training})
    fit(job_of(doc))
    lines = (tmp_path / name / "out" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _same_losses(left: list[dict], right: list[dict], tolerance: float) -> None:
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in left] == pytest.approx([r[key] for r in right], rel=tolerance), key


def test_channels_last_stores_conv_weights_nhwc_and_trains_the_same_model(tmp_path):
    model = build_model(job_of(digits_doc(tmp_path, training={"channelsLast": True})), 5)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    _same_losses(_history(tmp_path, "nhwc", channelsLast=True), _history(tmp_path, "nchw"), 1e-4)


@pytest.mark.slow
def test_compiled_model_trains_the_same_model_as_eager(tmp_path):
    """Inductor's CPU kernels reorder float sums, so losses agree to 1e-3, not bit for bit."""
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = _history(tmp_path, "compiled", compile=True)
    assert counters["stats"]["unique_graphs"] > 0, "training.compile: true ran the model eagerly"
    _same_losses(compiled, _history(tmp_path, "eager"), 1e-3)


def test_compile_without_a_compiler_names_the_field_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc, c++, g++ or clang here
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(SpecError, match=r"spec.training.compile: torch.compile needs a compiler"):
        fit(job_of(digits_doc(tmp_path, training={"compile": True})))
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_checkpoint_resumes_with_the_speed_options_switched(tmp_path):
    """They change how fast, not what: a job preempted without them resumes with them."""
    doc = digits_doc(tmp_path)
    first = fit(job_of(doc))
    doc["spec"]["training"].update(channelsLast=True, compile=True)
    resumed = fit(job_of(doc))  # "written by a different job" if they counted
    assert resumed["steps"] == first["steps"] and resumed["best_value"] == first["best_value"]
