"""One rank, real DataLoader workers: epochs cover every sample once, resume continues exactly,
every supported format reads, bad samples are skipped and named (the job-wide limit on them is
the loop's, tested with two ranks in tests/faults)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from shardgen import image_stream, png_bytes, sample_ids, stack_collate, text_stream, to_tensor, write_text_shards

from graft_trainer.data import BadDataError
from graft_trainer.streaming import (Decoder, Piece, Stream, batches_for, discover,
                                     plan_rank, round_robin_position, task_positions)


def epoch_ids(stream, epoch, start=0):
    return sample_ids(stream.loader(epoch, start))


def test_epoch_covers_every_sample_once_and_reshuffles_per_epoch(text_shards):
    stream = text_stream(str(text_shards), workers=2, batch_size=8)
    first, second = epoch_ids(stream, 0), epoch_ids(stream, 1)
    assert len(first) == len(second) == stream.batches_per_epoch == 13
    assert sorted(i for b in first for i in b) == list(range(101))
    assert sorted(i for b in second for i in b) == list(range(101))
    assert first != second  # a new shard order and new windows every epoch
    assert epoch_ids(stream, 0) == first  # the same seed and epoch give the same order


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_mid_epoch_neither_repeats_nor_skips(text_shards, workers):
    stream = text_stream(str(text_shards), workers=workers, batch_size=5)
    full = epoch_ids(stream, 2)
    for start in (1, 4, 11, len(full) - 1):
        resumed = epoch_ids(stream, 2, start)
        assert resumed == full[start:], f"resume at batch {start}"
        assert len(stream.loader(2, start)) == len(full) - start


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=9), world=st.integers(1, 4),
       workers=st.integers(1, 3), batch=st.integers(1, 9), epoch=st.integers(0, 3))
def test_plan_splits_any_sharding_exactly_with_equal_batch_counts(sizes, world, workers, batch, epoch):
    pieces = tuple(Piece(f"s{i}", 0, n) for i, n in enumerate(sizes))
    if sum(sizes) // world < batches_for(sum(sizes), world, batch):
        return  # a rank would hold fewer samples than batches: plan_rank refuses such a split
    seen, counts = [], set()
    for rank in range(world):
        n_batches, tasks = plan_rank(pieces, seed=1, epoch=epoch, rank=rank, world_size=world,
                                     batch_size=batch, workers=workers, start_batch=0, shuffle=True)
        counts.add(sum(len(t.batch_sizes) for t in tasks))
        for task in tasks:
            flat = [(p.url, i) for p in task.pieces for i in range(p.start, p.stop)]
            for positions in task_positions(task):
                assert 1 <= len(positions) <= batch
                seen += [flat[i] for i in positions]
    assert len(counts) == 1  # every rank steps the same number of times: no DDP deadlock
    assert sorted(seen) == sorted((f"s{i}", j) for i, n in enumerate(sizes) for j in range(n))


def test_round_robin_position_follows_exhausted_workers():
    assert round_robin_position([3, 1, 2], 4) == ([2, 1, 1], 1)  # worker 1 is done: skipped
    assert round_robin_position([3, 1, 2], 5) == ([2, 1, 2], 0)


def test_more_ranks_than_samples_is_refused(tmp_path):
    stream = text_stream(str(write_text_shards(tmp_path / "s", [2])), world_size=3, rank=2)
    with pytest.raises(ValueError, match="cannot feed 3 ranks"):
        list(stream.loader(0))


def _rows(n):
    return [{"text": f"sample-{i}", "label": i % 3} for i in range(n)]


def test_jsonl_csv_parquet_hf_and_indexless_shards_stream_every_row(tmp_path, text_shards):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "jsonl").mkdir()
    for part, rows in enumerate((_rows(30)[:17], _rows(30)[17:])):
        (tmp_path / "jsonl" / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rows.csv").write_text("text,label\n" + "".join(f"sample-{i},{i % 3}\n" for i in range(30)))
    pq.write_table(pa.Table.from_pylist(_rows(30)), tmp_path / "rows.parquet", row_group_size=7)
    datasets.Dataset.from_list(_rows(30)).save_to_disk(str(tmp_path / "hf"))
    cases = {
        "jsonl": str(tmp_path / "jsonl"),
        "csv": f"file://{tmp_path}/rows.csv",
        "parquet": str(tmp_path / "rows.parquet"),
        "hf-disk": str(tmp_path / "hf"),
        "webdataset": f"file://{text_shards}/shards-{{000000..000006}}.tar",  # no index: counted
    }
    for fmt, location in cases.items():
        total = 101 if fmt == "webdataset" else 30
        for rank in range(2):
            stream = text_stream(location, fmt=fmt, rank=rank, world_size=2, workers=2, batch_size=4)
            assert stream.num_samples == total, fmt
        ids = [i for r in range(2) for b in sample_ids(text_stream(location, fmt=fmt, rank=r, world_size=2, workers=2,
                                                                  batch_size=4).loader(0)) for i in b]
        assert sorted(ids) == list(range(total)), fmt


def test_hf_dataset_dict_streams_train_split_with_class_names_and_decoded_images(tmp_path):
    """A real DatasetDict (generated PNGs, ClassLabel names) saved to disk: its train split's
    Arrow files are the shards, class names come from its features, images decode to PIL."""
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog"])})
    train = datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(i), "path": None} for i in range(12)],
         "label": [i % 2 for i in range(12)]}, features=features)
    datasets.DatasetDict({"train": train, "test": train.select(range(2))}).save_to_disk(
        str(tmp_path / "dd"), num_shards={"train": 2, "test": 1})
    source = discover(str(tmp_path / "dd"), "hf-disk")
    assert source.classes == ("cat", "dog")
    assert [p.size for p in source.pieces] == [6, 6]
    decoder = Decoder("image-classification", "text", "label", "image", source.classes, to_tensor)
    stream = Stream(source.kind, source.pieces, list(source.classes), 4, 0, 0, 1, 2, False, decoder,
                    stack_collate)
    images, labels = zip(*stream.loader(0))
    assert torch.cat(labels).tolist() == [i % 2 for i in range(12)]
    assert torch.equal(images[0][1], to_tensor(Image.open(io.BytesIO(png_bytes(1)))))


def _image_shards(tmp_path, corrupt_keys):
    import webdataset as wds

    root = tmp_path / "img"
    root.mkdir()
    with wds.TarWriter(str(root / "shards-000000.tar")) as sink:
        for i in range(10):
            image = png_bytes(i)
            if f"{i:04d}" in corrupt_keys:
                image = image[: len(image) // 2]  # a truncated PNG, as a broken upload leaves it
            sink.write({"__key__": f"{i:04d}", "png": image, "cls": str(i % 2)})
    return root


def test_corrupt_images_are_skipped_and_logged_with_shard_and_key(tmp_path, caplog):
    root = _image_shards(tmp_path, {"0003", "0007"})
    with caplog.at_level(logging.WARNING, logger="graft.streaming"):
        batches = list(image_stream(str(root), ["a", "b"]).loader(0))
    assert sum(len(labels) for _, labels in batches) == 8
    assert all(images.shape[1:] == (3, 8, 8) for images, _ in batches)
    logged = caplog.text
    assert "shards-000000.tar key 0003" in logged and "shards-000000.tar key 0007" in logged


def test_a_truncated_shard_counts_every_sample_it_lost_as_bad(tmp_path):
    """The epoch plan keeps its length (no StopIteration deep in a worker): each lost sample is
    one bad sample naming the shard, for the job-wide data.maxBadSamples to judge."""
    root = _image_shards(tmp_path, set())
    (root / "index.json").write_text(json.dumps({"shards": [{"name": "shards-000000.tar", "count": 10}],
                                                 "classes": ["a", "b"]}))
    shard = root / "shards-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    stream = image_stream(str(root), ["a", "b"])
    batches = list(stream.loader(0))
    assert 0 < len(stream.bad) < 10
    assert sum(len(labels) for _, labels in batches) + len(stream.bad) == 10
    assert stream.bad and all("shards-000000.tar" in source for source in stream.bad)
    assert any("truncated or corrupt shard" in error for error in stream.bad.values())


def test_an_empty_shard_without_an_index_is_named_as_bad_data(tmp_path):
    root = _image_shards(tmp_path, set())
    (root / "shards-000001.tar").write_bytes(b"")
    with pytest.raises(BadDataError, match="shards-000001.tar"):
        discover(str(root), "webdataset")


def test_malformed_jsonl_row_is_counted_as_bad(tmp_path):
    lines = [json.dumps(r) for r in _rows(8)]
    lines[5] = '{"text": "sample-5", "label": '  # cut off mid-row
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    stream = text_stream(str(tmp_path / "rows.jsonl"), fmt="jsonl")
    ids = [i for b in sample_ids(stream.loader(0)) for i in b]
    assert sorted(ids) == [0, 1, 2, 3, 4, 6, 7]
    assert list(stream.bad) == [f"shard {tmp_path / 'rows.jsonl'} key 5"]


def _awkward_tar(path, tar_format) -> None:
    """A tar as other tools write them: a directory entry, a __cache__ member webdataset skips,
    an upper-case extension, a name over 100 characters (a ustar prefix, a pax or a GNU header),
    a member without an extension, and members of one sample not all adjacent in name order."""
    import tarfile

    def add(tar, name, data=b"", kind=tarfile.REGTYPE):
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)

    deep = "d" * 60 + "/" + "e" * 60
    with tarfile.open(path, "w", format=tar_format) as tar:
        add(tar, "__cache__/0000.txt", b"skipped")
        add(tar, "train", kind=tarfile.DIRTYPE)
        for i in range(7):
            folder = deep if i == 3 else "train"
            add(tar, f"{folder}/{i:04d}.TXT", f"sample-{i}".encode())
            add(tar, f"{folder}/{i:04d}.cls", str(i % 2).encode())
            add(tar, f"{folder}/{i:04d}.seg.json", b"[]")
        add(tar, "README", b"not a sample")


@pytest.mark.parametrize("tar_format", ["ustar", "pax", "gnu"])
@pytest.mark.parametrize("start, stop", [(0, 7), (2, 5), (6, 7)])
def test_a_plain_tar_read_by_its_headers_gives_webdatasets_samples(tmp_path, tar_format, start, stop):
    """Shards without a members file (made by other tools) are read by walking their headers,
    not through tarfile and webdataset's iterators (several times faster for small samples):
    every piece must hold exactly the samples webdataset's grouping gives."""
    import tarfile

    from webdataset.tariterators import group_by_keys, tar_file_expander

    from graft_trainer.streaming import _count, _walk_headers, read_piece

    path = tmp_path / "plain.tar"
    _awkward_tar(path, {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}[tar_format])
    piece = Piece(str(path), start, stop)
    samples = lambda pairs: [(key, {k: v for k, v in record.items() if k != "__url__"}) for key, record in pairs]
    with open(path, "rb") as f:
        everything = [(s["__key__"], s) for s in group_by_keys(tar_file_expander([{"url": str(path), "stream": f}]))]
        walked = _walk_headers(f, piece)
    assert _count("tar", str(path)) == len(everything) == 7
    expected = samples(everything[start:stop])
    assert [key for key, _ in expected] == [f"{'d' * 60 + '/' + 'e' * 60 if i == 3 else 'train'}/{i:04d}"
                                            for i in range(start, stop)]
    assert samples(read_piece("tar", piece)) == expected
    assert (walked is None) == (tar_format != "ustar")  # sample 3's pax or GNU long-name header: tarfile's
