"""spec.ray.ingest: ray-data on real Ray Data: the training shards read as a Ray Dataset, split
equally among Ray Train workers by Ray, decoded by the trainer's own decoder. First the split
itself (two consumers of a real `streaming_split`, in threads as two workers would be), then a
real 2-worker fine-tune submitted through the SDK's Ray backend."""

from __future__ import annotations

import random
import shutil
import threading
from pathlib import Path

import pytest

from graft.datapack import pack
from ray_jobs import tiny_job
from shardgen import sample_ids, text_stream, write_text_shards

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.distributed]
ray_train = pytest.importorskip("graft_trainer.ray_train")
SIZES = [20, 3, 17, 1, 30, 12, 18]  # 101 samples: the equal split drops one


def _consume(splits: list, epoch: int, start_batch: int = 0) -> list[list[list[int]]]:
    """Every split's batches of `epoch`, read concurrently (Ray starts an epoch's execution
    once every consumer asks for it, as each Ray Train worker does)."""
    seen: list = [None] * len(splits)

    def read(index: int) -> None:
        seen[index] = sample_ids(splits[index].loader(epoch, start_batch))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(splits))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(s is not None for s in seen), "a consumer of the split did not finish"
    return seen


def test_each_epoch_gives_the_workers_equal_disjoint_shares(ray_backend, tmp_path):
    import ray

    shards = write_text_shards(tmp_path / "text", SIZES)
    stream = text_stream(str(shards))  # the shards path's split: decoder, ids collate, batch 4
    urls = [piece.url for piece in stream.pieces]
    dataset = ray.data.read_webdataset(urls, decoder=None).randomize_block_order(seed=0)
    splits = [ray_train.RayDataSplit(shard, stream, 2) for shard in dataset.streaming_split(2, equal=True)]
    assert splits[0].batches_per_epoch == 13  # 50 rows each, batches of 4

    orders = []
    for epoch in (0, 1):
        batches = _consume(splits, epoch)
        assert [len(b) for b in batches] == [13, 13]  # the same step count on every worker
        ids = [[i for batch in worker for i in batch] for worker in batches]
        assert len(ids[0]) == len(ids[1]) == 50
        assert not set(ids[0]) & set(ids[1]) and len(set(ids[0]) | set(ids[1])) == 100
        assert set(ids[0]) | set(ids[1]) <= set(range(101))
        orders.append(ids[0] + ids[1])
    assert orders[0] != orders[1]  # reshuffled every epoch

    resumed = _consume(splits, 2, start_batch=3)  # Ray Data cannot seek: the first 3 are re-read and dropped
    assert [len(b) for b in resumed] == [10, 10]


def _digits_shards(root: Path) -> tuple[Path, Path]:
    """The real scikit-learn digits, 80/20 per class, packed as WebDataset shards by `graft data pack`."""
    from graft_trainer.builtin import resolve

    rng = random.Random(0)
    for folder in sorted(p for p in Path(resolve("builtin://sklearn-digits")).iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        rng.shuffle(files)
        cut = int(len(files) * 0.8)
        for split, chosen in (("train", files[:cut]), ("val", files[cut:])):
            target = root / "folders" / split / folder.name
            target.mkdir(parents=True)
            for file in chosen:
                shutil.copy(file, target / file.name)
    for split in ("train", "val"):
        pack(str(root / "folders" / split), str(root / split), "200KB")
    return root / "train", root / "val"


def test_two_worker_finetune_reads_its_training_data_through_ray_data(ray_backend, tmp_path):
    train, val = _digits_shards(tmp_path / "digits")
    job = tiny_job(
        "ray-data-digits", tmp_path / "out",
        data={"format": "webdataset", "train": str(train), "validation": str(val), "imageSize": 32},
        # the two workers take 1 CPU between them: Ray Data's read tasks need the other one
        resources={"procsPerNode": 2, "cpu": "1"},
        ray={"ingest": "ray-data", "maxFailures": 0},
    )
    ray_backend.submit(job)
    status = ray_backend.wait(job.metadata.name, timeout=300)
    logs = list(ray_backend.logs(job.metadata.name))
    assert status.phase == "Succeeded", "\n".join(logs[-40:])
    # 1,433 training images: 716 per worker, 23 batches of 32 each epoch
    assert status.metrics["steps"] == 3 * 23 and status.metrics["val_accuracy"] > 0.5
    assert any("ReadWebDataset" in line and "split(2, equal=True)" in line for line in logs)
