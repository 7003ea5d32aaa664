"""Two real processes (gloo), two dataloader workers each, reading generated shards: every
epoch covers each sample id exactly once across ranks, epochs differ in order, uneven shard
counts (fewer shards than readers included) finish without a deadlock, and a run resumed
mid-epoch neither repeats nor skips a sample. Same for a Hugging Face dataset saved to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from shardgen import write_text_shards

from graft.backends.local import free_port

READER = Path(__file__).with_name("rank_reader.py")


def flat(batches):
    return [i for batch in batches for i in batch]


def _run_two_ranks(tmp_path, locations: list[str]) -> list[dict]:
    port = free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, str(READER), str(tmp_path), *locations],
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port), "TOKENIZERS_PARALLELISM": "false"},
        )
        for r in range(2)
    ]
    assert [p.wait(timeout=150) for p in ranks] == [0, 0], "a rank failed or hung (see its stderr)"
    return [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]


def _assert_exact_epochs_and_resume(reports: list[dict], location: str, total: int) -> None:
    per_rank = [report[location] for report in reports]
    for epoch in ("epoch0", "epoch1"):
        ids = flat(per_rank[0][epoch]) + flat(per_rank[1][epoch])
        assert sorted(ids) == list(range(total)), f"{location} {epoch}: not exactly once"
        assert {len(r[epoch]) for r in per_rank} == {per_rank[0]["batches_per_epoch"]}
    assert flat(per_rank[0]["epoch0"]) != flat(per_rank[0]["epoch1"])  # reshuffled
    for rank in per_rank:
        before, after = flat(rank["interrupted"]), flat(rank["resumed"])
        assert len(rank["interrupted"]) == 3
        assert not set(before) & set(after), "a resumed run repeated samples"
        assert before + after == flat(rank["epoch1"]), "resume skipped or reordered samples"


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_two_workers_cover_each_epoch_exactly_and_resume(tmp_path):
    uneven = write_text_shards(tmp_path / "uneven", [20, 3, 17, 1, 30, 12, 18])  # 101 samples
    few = write_text_shards(tmp_path / "few", [40, 1, 9])  # 3 shards for 2 ranks x 2 workers
    reports = _run_two_ranks(tmp_path, [str(uneven), str(few)])
    for location, total in ((str(uneven), 101), (str(few), 50)):
        _assert_exact_epochs_and_resume(reports, location, total)


@pytest.mark.distributed
@pytest.mark.slow
def test_hugging_face_dataset_saved_to_disk_streams_exactly_across_two_ranks(tmp_path):
    """A real `datasets.Dataset` of generated 'sample-<id>' rows, saved in 3 Arrow files:
    3 shards for 2 ranks x 2 workers, so no rank or worker owns whole files."""
    import datasets

    rows = [{"text": f"sample-{i}", "label": i % 3} for i in range(301)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"), num_shards=3)
    location = f"hf-disk=file://{tmp_path}/hf"
    _assert_exact_epochs_and_resume(_run_two_ranks(tmp_path, [location]), location, 301)
