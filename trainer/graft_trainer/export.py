"""The deliverable: the best model, in formats other tools load without Graft.

`model/model.safetensors` holds the whole network (`backbone.*` + `head.*`), `model/graft.json`
says how to rebuild it (spec, class names, metrics), and for transformer backbones `model/hf/`
is a `save_pretrained` directory (encoder + tokenizer, labels in the config) that
`transformers.AutoModel.from_pretrained` loads. Written to a temporary directory, fsynced and
renamed (`graft.fsutil.publish_dir`), so a reader never sees a half-written model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_model, save_model

from graft.fsutil import publish_dir
from graft.spec import FineTuneJob, parse_spec
from graft_trainer.models import GraftModel, build_model


def export(model: GraftModel, job: FineTuneJob, classes: list[str], metrics: dict, directory: Path) -> Path:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    info = {"spec": job.to_document(), "classes": classes, "metrics": metrics, "backbone": job.spec.backbone.name}
    (tmp / "graft.json").write_text(json.dumps(info, indent=2))
    if model.family == "hf":
        _save_pretrained(model, job, classes, tmp / "hf")
    return publish_dir(tmp, directory)


def _save_pretrained(model: GraftModel, job: FineTuneJob, classes: list[str], directory: Path) -> None:
    from graft_trainer.data import load_tokenizer

    encoder = model.backbone
    encoder.config.id2label = dict(enumerate(classes))
    encoder.config.label2id = {name: i for i, name in enumerate(classes)}
    encoder.save_pretrained(directory)
    load_tokenizer(job).save_pretrained(directory)


def load_exported(directory: str | Path) -> tuple[GraftModel, list[str]]:
    """Rebuild an exported model for inference (eval mode) and its class names."""
    directory = Path(directory)
    info = json.loads((directory / "graft.json").read_text())
    document = info["spec"]
    document["spec"]["backbone"].pop("weights", None)  # the export carries the weights itself
    if (directory / "hf").is_dir():
        document["spec"]["backbone"]["name"] = f"hf/{directory / 'hf'}"
    model = build_model(parse_spec(document), len(info["classes"]))
    load_model(model, str(directory / "model.safetensors"))
    return model.eval(), info["classes"]
