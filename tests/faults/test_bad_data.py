"""Bad data, one policy, with two real ranks: data.maxBadSamples counts distinct bad samples
over the whole job (not per rank); past it every rank fails with the same list of files; a
truncated shard is bad samples naming the shard; a rank that cannot read a batch at all stops
the other at once; a label outside the classes and a missing text column are refused naming
the field and the file. Tiny resnet10t RANDOMLY INITIALISED on 16 px real digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fault_jobs import finish, launch_ranks, logs, write
from graft.datapack import pack
from graft.spec.contracts import PEER_FAILED_EXIT_CODE
from graft_trainer.builtin import resolve
from graft_trainer.data import build_splits
from trainer_jobs import digits_doc, job_of, text_doc

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.faults]


def _folder(tmp_path: Path) -> Path:
    """Eight real digit scans per class 0-4, as an ImageFolder of our own to break."""
    digits = Path(resolve("builtin://sklearn-digits?classes=0-4"))
    for label in "01234":
        (tmp_path / "train" / label).mkdir(parents=True)
        for png in sorted((digits / label).glob("*.png"))[:8]:
            shutil.copy(png, tmp_path / "train" / label / png.name)
    return tmp_path / "train"


def _doc(tmp_path, **data):
    return digits_doc(tmp_path, data={"train": str(tmp_path / "train"), "limit": None, "validationFraction": 0.2,
                                      **data}, training={"batchSize": 2})


def _first_batch(doc, rank: int) -> list[Path]:
    """The files `rank` of 2 reads first (the same plan the trainer computes)."""
    train = build_splits(job_of(doc), rank, 2).train
    return [Path(train.dataset.records.inputs[i]) for i in train.indices(0)[:2]]


def _corrupt(path: Path) -> None:
    path.write_bytes(b"not a png")


def test_max_bad_samples_counts_over_all_ranks(tmp_path):
    _folder(tmp_path)
    mine = [_first_batch(_doc(tmp_path), rank)[0] for rank in (0, 1)]  # one bad sample on each rank
    for path in mine:
        _corrupt(path)

    strict = write(_doc(tmp_path, maxBadSamples=1), tmp_path / "strict" / "job.yaml")
    assert finish(launch_ranks(strict)) == [1, 1], logs(strict)[-3000:]  # per-rank counting would pass
    for rank in (0, 1):
        text = (strict.parent / f"rank-{rank}.log").read_text()
        assert "error: bad data: 2 bad samples over all ranks exceed spec.data.maxBadSamples=1" in text
        assert all(str(path) in text for path in mine) and "Traceback" not in text

    tolerant = write(_doc(tmp_path, maxBadSamples=2), tmp_path / "tolerant" / "job.yaml")
    assert finish(launch_ranks(tolerant)) == [0, 0], logs(tolerant)[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["bad_samples"] == 2
    assert sorted(b["source"] for b in report["bad_sample_list"]) == sorted(map(str, mine))


def test_a_rank_that_cannot_read_a_batch_stops_the_other_at_once(tmp_path):
    _folder(tmp_path)
    doc = _doc(tmp_path, maxBadSamples=10)
    unreadable = _first_batch(doc, 1)
    for path in unreadable:  # every sample of rank 1's first batch
        _corrupt(path)
    spec = write(doc, tmp_path / "job.yaml")
    codes = finish(launch_ranks(spec))
    assert codes == [PEER_FAILED_EXIT_CODE, 1], logs(spec)[-3000:]
    stopped = (tmp_path / "rank-0.log").read_text()
    assert "rank 0 stops: rank 1 on" in stopped and "every sample of a batch is unreadable" in stopped
    assert str(unreadable[0]) in stopped and "Traceback" not in stopped


def test_a_truncated_shard_fails_every_rank_naming_it(tmp_path):
    pack(_folder(tmp_path), tmp_path / "shards", shard_size=16384, progress=False)  # ~8 samples a shard
    shard = sorted((tmp_path / "shards").glob("shards-*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])  # an interrupted upload
    doc = digits_doc(tmp_path, data={"format": "webdataset", "train": str(tmp_path / "shards"), "limit": None},
                     training={"batchSize": 2})
    spec = write(doc, tmp_path / "job.yaml")
    assert finish(launch_ranks(spec)) == [1, 1], logs(spec)[-3000:]
    for rank in (0, 1):
        text = (tmp_path / f"rank-{rank}.log").read_text()
        assert "exceed spec.data.maxBadSamples=0" in text and f"shard {shard} key" in text
        assert "Traceback" not in text


def test_a_label_outside_the_classes_is_refused_naming_the_file(tmp_path):
    _folder(tmp_path)
    (tmp_path / "val" / "7").mkdir(parents=True)
    stray = tmp_path / "val" / "7" / "stray.png"
    shutil.copy(next((tmp_path / "train" / "1").glob("*.png")), stray)
    spec = write(_doc(tmp_path, validation=str(tmp_path / "val")), tmp_path / "job.yaml")
    assert finish(launch_ranks(spec)) == [2, 2]
    for rank in (0, 1):
        text = (tmp_path / f"rank-{rank}.log").read_text()
        assert "spec.data.validation: labels ['7'] are not among the training classes" in text
        assert str(stray) in text and "Traceback" not in text


def test_a_missing_text_column_is_refused_naming_the_field_and_file(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"sentence": f"word {i}", "label": i % 2}) + "\n" for i in range(16)))
    spec = write(text_doc(tmp_path, data={"train": str(rows)}), tmp_path / "job.yaml")
    assert finish(launch_ranks(spec)) == [2, 2]
    for rank in (0, 1):
        text = (tmp_path / f"rank-{rank}.log").read_text()
        assert f"spec.data.train ({rows}): column(s) ['text'] not found" in text and "data.textField" in text
