"""Stream sharded data to many ranks without downloading it first (`spec.data.streaming`).

Why it is built this way:
- Every epoch is a *plan* computed from sample counts (an `index.json` written by
  `graft data pack`, or counted once at start-up): the shard order is reshuffled with
  (seed, epoch); the shuffled sample sequence is cut into one contiguous range per rank, so an
  epoch covers every sample exactly once across ranks; each rank cuts its range into the SAME
  number of batches as every other rank (sizes differ by at most one sample), so DDP never
  waits at epoch end on a rank that ran out; each dataloader worker reads one contiguous block
  of those batches, i.e. its own shards (only a boundary shard is shared, each side reading its
  own samples).
- Resume is a position, not a replay: `loader(epoch, start_batch)` recomputes the plan, works
  out how many batches each worker had delivered (the DataLoader hands batches out round-robin)
  and seeks every worker straight to its next sample. Skipping never decodes.
- Shuffling inside a worker uses fixed windows of consecutive samples, so a position inside
  the stream maps to a window and an offset without reading what came before.
- A shard `graft data pack` wrote comes with a members file (where each sample's members lie),
  so a sample is read straight out of the memory-mapped shard (one seek and one read where the
  filesystem is remote); parsing three tar headers per sample in Python cost a small image
  about a third of its loading time. A shard made by another tool has its
  headers walked first (a 512-byte read and a seek per member, no tarfile), then reads the
  same way; tarfile reads only what that walk leaves to it (pax or GNU long-name headers).
- Decoding and augmentation run inside the DataLoader workers, which live as long as the
  stream: each epoch they plan again from (epoch, start batch) the training process shares with
  them, and draw each batch's augmentations from its own seed; bad samples (a sample that does
  not decode, a label outside the classes, a missing field, every sample a truncated shard
  lost) travel back beside the batch so the main process records them with shard and key;
  the loop sums them over ranks against the limit.

Formats: WebDataset tars, JSONL/CSV/Parquet files, and Hugging Face datasets written by
`save_to_disk` (`hf-disk`), whose Arrow files are the shards.

Locations are fsspec URLs: local paths, file://, and s3:// or gs:// when s3fs/gcsfs is
installed. Cloud credentials come from the environment: put them in a Kubernetes Secret and
expose them with `spec.kubernetes.env[].secretKeyRef` (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3-compatible stores incl. GCS HMAC keys), or use
a workload identity through `spec.kubernetes.serviceAccount`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import mmap
import random
import re
import sys
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import fsspec
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from graft.spec import FineTuneJob, SpecError
from graft.spec.contracts import DATA_INDEX_FILE, SHARD_MEMBERS_VERSION
from graft_trainer.builtin import resolve
from graft_trainer.data import BadDataError, delivered, seed_augmentation

log = logging.getLogger("graft.streaming")

SHUFFLE_WINDOW = 256  # samples held (undecoded) per worker to shuffle inside a shard range
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")
ROW_FORMATS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
SHARD_SUFFIX = {"webdataset": ".tar", "jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}


# ---------------------------------------------------------------- what a location holds


@dataclass(frozen=True)
class Piece:
    """A contiguous run of samples [start, stop) of one shard (a file, or rows of a dataset)."""

    url: str
    start: int
    stop: int
    members: str | None = None  # the tar shard's members file, when `graft data pack` wrote one

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Source:
    kind: str  # "tar" | "jsonl" | "csv" | "parquet" | "arrow" (a Hugging Face dataset)
    pieces: tuple[Piece, ...]
    classes: tuple[str, ...] | None


@lru_cache(maxsize=16)  # train and validation streams share the train location's discovery
def discover(location: str, data_format: str, label_field: str = "label") -> Source:
    """Resolve a location (dir with index.json, index.json, brace pattern, glob, file) to shards."""
    location = resolve(location)
    if data_format == "hf-disk":
        return _discover_hf(location, label_field)
    kind = "tar" if data_format == "webdataset" else ROW_FORMATS[data_format]
    fs, _, _ = fsspec.get_fs_token_paths(location)
    index_url = _index_url(fs, location)
    if index_url is not None:
        with fsspec.open(index_url, "r") as f:
            index = json.load(f)
        base = index_url.rsplit("/", 1)[0]
        pieces = tuple(Piece(f"{base}/{s['name']}", 0, int(s["count"]),
                             f"{base}/{s['members']}" if s.get("members") else None)
                       for s in index["shards"])
        return Source(kind, pieces, tuple(index["classes"]) if index.get("classes") else None)
    urls = _expand(fs, location, SHARD_SUFFIX[data_format])
    if not urls:
        raise FileNotFoundError(f"no {data_format} shards found at {location}")
    return Source(kind, tuple(Piece(u, 0, _count_readable(kind, u)) for u in urls), None)


def _index_url(fs, location: str) -> str | None:
    if location.endswith(DATA_INDEX_FILE):
        return location
    candidate = f"{location.rstrip('/')}/{DATA_INDEX_FILE}"
    if fs.isdir(_strip(location)) and fs.exists(_strip(candidate)):
        return candidate
    return None


def _strip(url: str) -> str:
    return fsspec.core.strip_protocol(url)


def _expand(fs, location: str, suffix: str) -> list[str]:
    import braceexpand  # ships with webdataset; `shards-{000000..000099}.tar` is its syntax

    protocol = location.split("://", 1)[0] + "://" if "://" in location else ""
    urls: list[str] = []
    for pattern in braceexpand.braceexpand(location):
        path = _strip(pattern)
        if fs.isdir(path):
            found = [p for p in fs.ls(path, detail=False) if p.endswith(suffix)]
        elif any(c in path for c in "*?["):
            found = fs.glob(path)
        else:
            found = [path]
        urls += [protocol + p if protocol else p for p in sorted(found)]
    return urls


def _count_readable(kind: str, url: str) -> int:
    """`_count`, with an unreadable shard (empty, truncated, not the format) named as bad data."""
    try:
        return _count(kind, url)
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise BadDataError({url: f"{type(exc).__name__}: {exc}"},
                           "a shard cannot be read to count its samples (empty, truncated or not "
                           f"{kind}?); repack it or remove it from spec.data") from None


def _count(kind: str, url: str) -> int:
    """Sample count of a shard without an index: headers only (tar), metadata (parquet),
    record-batch lengths (arrow)."""
    if kind == "arrow":
        with _arrow_batches(url) as batches:
            return sum(batch.num_rows for batch in batches)
    with fsspec.open(url, "rb") as f:
        if kind == "tar":
            walked = _walk_headers(f, Piece(url, 0, sys.maxsize))
            if walked is not None:
                return len(walked[0])
            from webdataset.tariterators import group_by_keys, tar_file_expander

            f.seek(0)
            return sum(1 for _ in group_by_keys(tar_file_expander([{"url": url, "stream": f}])))
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(f).metadata.num_rows
        lines = sum(1 for line in f if line.strip())
        return lines - 1 if kind == "csv" else lines


def _discover_hf(location: str, label_field: str) -> Source:
    """A dataset written by `save_to_disk`, streamed as the Arrow files it wrote (one shard
    each), read the way `load_dataset("arrow", data_files=..., streaming=True)` reads them.

    Not `load_from_disk`: on s3:// or gs:// it downloads the whole dataset before the first
    row. Not HF's `split_dataset_by_node`: it gives ranks unequal sample counts (whole shards)
    or makes every rank read everything (every n-th example), and it knows no counts, so it
    cannot promise the equal batch counts and positional resume the epoch plan gives."""
    fs, _, _ = fsspec.get_fs_token_paths(location)
    base = location.rstrip("/")
    if fs.exists(_strip(f"{base}/dataset_dict.json")):  # a DatasetDict: stream its train split
        base += "/train"
    with fsspec.open(f"{base}/state.json", "r") as f:
        urls = [f"{base}/{data_file['filename']}" for data_file in json.load(f)["_data_files"]]
    names = getattr(_hf_features(base).get(label_field), "names", None)
    return Source("arrow", tuple(Piece(u, 0, _count("arrow", u)) for u in urls),
                  tuple(names) if names else None)


@lru_cache(maxsize=4)
def _hf_features(dataset_url: str):
    """The dataset's `datasets.Features`: they turn stored rows back into what users saved
    (an Image column's bytes into a PIL image)."""
    import datasets

    with fsspec.open(f"{dataset_url}/dataset_info.json", "r") as f:
        return datasets.Features.from_dict(json.load(f)["features"])


@contextmanager
def _arrow_batches(url: str) -> Iterator:
    """Record batches of an Arrow stream file. Local files are memory-mapped, so batches that
    are only counted or skipped are never read from disk; remote ones are read through."""
    import pyarrow as pa

    from fsspec.implementations.local import LocalFileSystem

    fs, _, (path,) = fsspec.get_fs_token_paths(url)
    with (pa.memory_map(path) if isinstance(fs, LocalFileSystem) else fsspec.open(url, "rb").open()) as f:
        yield pa.ipc.open_stream(f)


# ---------------------------------------------------------------- the epoch plan (pure)


def holdout(pieces: tuple[Piece, ...], fraction: float) -> tuple[tuple[Piece, ...], tuple[Piece, ...]]:
    """Split off the last `fraction` of samples (in shard-name order) for validation.

    `graft data pack` shuffles before writing, so this tail is a random subset."""
    total = sum(p.size for p in pieces)
    cut = round(total * (1 - fraction))
    return take(pieces, 0, cut), take(pieces, cut, total)


def take(pieces: tuple[Piece, ...] | list[Piece], lo: int, hi: int) -> tuple[Piece, ...]:
    """The pieces covering sample positions [lo, hi) of the concatenated sequence."""
    out, offset = [], 0
    for p in pieces:
        a, b = max(lo, offset), min(hi, offset + p.size)
        if a < b:
            out.append(dataclasses.replace(p, start=p.start + a - offset, stop=p.start + b - offset))
        offset += p.size
    return tuple(out)


def epoch_order(pieces: tuple[Piece, ...], seed: int, epoch: int, shuffle: bool) -> list[Piece]:
    order = list(pieces)
    if shuffle:
        random.Random(f"graft-shards:{seed}:{epoch}").shuffle(order)
    return order


def split_evenly(n: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of part `index` when n items are cut into `parts` runs differing by ≤ 1."""
    return index * n // parts, (index + 1) * n // parts


def batches_for(total: int, world_size: int, batch_size: int) -> int:
    """Batches every rank yields per epoch: the same on all ranks, so none waits at epoch end."""
    largest_rank = -(-total // world_size)
    return -(-largest_rank // batch_size)


def round_robin_position(counts: list[int], consumed_total: int) -> tuple[list[int], int]:
    """How many batches each worker had delivered after `consumed_total`, and who is next.

    Mirrors the DataLoader: workers take turns, an exhausted worker drops out of the turn."""
    done, turn = [0] * len(counts), 0
    for _ in range(consumed_total):
        while done[turn] >= counts[turn]:
            turn = (turn + 1) % len(counts)
        done[turn] += 1
        turn = (turn + 1) % len(counts)
    return done, turn


@dataclass(frozen=True)
class WorkerTask:
    """What one dataloader worker yields this epoch: batches cut from a run of samples."""

    pieces: tuple[Piece, ...]
    batch_sizes: tuple[int, ...]
    first_batch: int  # batches of this task already delivered before the resume point
    window_seed: str | None  # None: keep stream order (evaluation)


def plan_rank(
    source_pieces: tuple[Piece, ...], *, seed: int, epoch: int, rank: int, world_size: int,
    batch_size: int, workers: int, start_batch: int, shuffle: bool,
) -> tuple[int, list[WorkerTask]]:
    """The batches of one rank for one epoch, as tasks for `workers` logical workers, rotated
    so the DataLoader's round-robin resumes exactly where the interrupted run stood."""
    total = sum(p.size for p in source_pieces)
    if total < world_size:
        raise ValueError(f"{total} samples cannot feed {world_size} ranks")
    n_batches = batches_for(total, world_size, batch_size)
    order = epoch_order(source_pieces, seed, epoch, shuffle)
    lo, hi = split_evenly(total, world_size, rank)
    n_rank = hi - lo
    if n_rank < n_batches:  # only with batch size 1 and a total not divisible by the ranks
        raise ValueError(
            f"rank {rank} holds {n_rank} samples, fewer than the {n_batches} steps every rank "
            "must take; raise training.batchSize or use a sample count divisible by the ranks"
        )
    sizes = [split_evenly(n_rank, n_batches, j)[1] - split_evenly(n_rank, n_batches, j)[0]
             for j in range(n_batches)]
    workers = max(1, min(workers, n_batches))
    tasks, cursor = [], lo
    for w in range(workers):
        b0, b1 = split_evenly(n_batches, workers, w)
        n = sum(sizes[b0:b1])
        tasks.append((take(order, cursor, cursor + n), tuple(sizes[b0:b1]), cursor))
        cursor += n
    done, turn = round_robin_position([len(t[1]) for t in tasks], min(start_batch, n_batches))
    rotated = [(turn + i) % workers for i in range(workers)]
    return n_batches, [
        WorkerTask(tasks[w][0], tasks[w][1], done[w],
                   f"graft-window:{seed}:{epoch}:{tasks[w][2]}" if shuffle else None)
        for w in rotated
    ]


def task_positions(task: WorkerTask) -> Iterator[list[int]]:
    """Per remaining batch, the positions (within the task's run) of its samples, in order.

    Windows of SHUFFLE_WINDOW consecutive samples are permuted with a seed; a resume point is
    a window and an offset, so nothing before it is read."""
    n = sum(task.batch_sizes)
    start = sum(task.batch_sizes[: task.first_batch])

    def permuted(window_start: int) -> list[int]:
        window = list(range(window_start, min(window_start + SHUFFLE_WINDOW, n)))
        if task.window_seed is not None:
            random.Random(f"{task.window_seed}:{window_start}").shuffle(window)
        return window

    stream = (i for w in range(start - start % SHUFFLE_WINDOW, n, SHUFFLE_WINDOW)
              for i in permuted(w))
    stream = islice(stream, start % SHUFFLE_WINDOW, None)
    for size in task.batch_sizes[task.first_batch:]:
        yield list(islice(stream, size))


# ---------------------------------------------------------------- reading raw records


def read_piece(kind: str, piece: Piece) -> Iterator[tuple[str, Any]]:
    """(key, raw record) for each sample of a piece; the samples before it are skipped by
    seeking (tar headers, parquet row groups, arrow record batches) or unparsed lines."""
    if kind == "arrow":
        yield from _read_arrow(piece)
        return
    with fsspec.open(piece.url, "rb") as f:
        if kind == "tar":
            samples = _member_offsets(piece)
            if samples is not None:
                yield from _read_indexed_tar(f, piece, samples)
            elif (walked := _walk_headers(f, piece)) is not None:
                samples, ended_early = walked
                yield from _read_indexed_tar(f, piece, samples, from_members_file=False)
                yield from _lost(piece, len(samples), ended_early)
            else:
                f.seek(0)
                yield from _read_tar(f, piece)
        elif kind == "parquet":
            yield from _read_parquet(f, piece)
        else:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            yield from _read_lines(kind, text, piece)


def _member_offsets(piece: Piece) -> list | None:
    """[key, [[extension, data offset, size], ...]] of the piece's samples, from its shard's
    members file; None (read it as a plain tar) when it has none, it was not uploaded, or a
    newer `graft data pack` wrote a layout this trainer does not know."""
    if not piece.members:
        return None
    try:
        with fsspec.open(piece.members, "r") as members_file:
            document = json.load(members_file)
    except FileNotFoundError:
        _warn_missing(piece.members)
        return None
    return document["samples"][piece.start:piece.stop] if document.get("v") == SHARD_MEMBERS_VERSION else None


@lru_cache(maxsize=None)
def _warn_missing(members_url: str) -> None:
    """Once per file and process: every epoch reads the shard again."""
    log.warning("%s is missing (not uploaded with its shard?): reading the shard as a plain tar, "
                "which is slower for small samples", members_url)


def _read_indexed_tar(f, piece: Piece, samples: list, *, from_members_file: bool = True) -> Iterator[tuple[str, Any]]:
    """Samples of a shard at the offsets its members file (or `_walk_headers`) gives: each
    member one copy out of the memory-mapped shard, or, where the filesystem has no local file
    to map, a sample's members one seek and one read. A sample the shard no longer holds in
    full, or whose members' headers do not carry the names the members file gives (the shard
    was rewritten), is a bad sample with its key."""
    with _mapped(f) as mapped:
        for key, members in samples:
            start = members[0][1] - tarfile.BLOCKSIZE
            end = members[-1][1] + members[-1][2]
            if mapped is None:
                f.seek(start)
                span, base = f.read(end - start), start
            else:
                span, base = mapped, 0
            if len(span) < end - base:
                yield key, ValueError("the shard ends before this sample (truncated or corrupt shard?)")
            elif from_members_file and not _headers_name(span, base, key, members):
                yield key, ValueError(f"the shard does not hold this sample where {piece.members} says "
                                      "(shard rewritten after `graft data pack`?)")
            else:
                yield key, {"__key__": key, **{extension: span[offset - base:offset - base + size]
                                               for extension, offset, size in members}}


def _headers_name(span, base: int, key: str, members: list) -> bool:
    """Whether the tar header before each member names it as the members file does."""
    for extension, offset, _ in members:
        name = f"{key}.{extension}\0".encode()
        at = offset - tarfile.BLOCKSIZE - base
        if span[at:at + len(name)] != name:
            return False
    return True


@contextmanager
def _mapped(f) -> Iterator[mmap.mmap | None]:
    """The shard `f` memory-mapped, or None where it is not a local file. A sample read from the
    map is one copy out of the page cache: 3.7 us for a 64 px PNG sample against 8.8 us for a
    seek and a read through fsspec (bench_streaming's shards, read without decoding). A shard
    cut short before the epoch gives bad samples; one cut short while mapped ends the worker
    with SIGBUS (PyTorch's message for it then suspects shared memory), as any mapped file
    would."""
    try:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError):  # not a local file (io.UnsupportedOperation), or empty
        yield None
        return
    with mapped:
        yield mapped


META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: __name__ files and directories


def _walk_headers(f, piece: Piece) -> tuple[list, str | None] | None:
    """A plain tar's members-file layout for the piece ([key, [[extension, data offset, size],
    ...]] per sample, grouped as webdataset groups them), read from the member headers alone:
    a 512-byte read and a seek each. With it a plain tar reads like a packed shard; tarfile
    and webdataset's iterators spent ~55 µs of a 64 px sample on the headers. Returns the
    samples and why the walk ended before the piece did (None if it did not), or None for
    what only tarfile reads (pax or GNU long-name headers, sparse files, base-256 sizes, a bad
    checksum, an empty file)."""
    from webdataset.tariterators import base_plus_ext

    samples: list = []
    key, index, offset, ended_early = None, -1, 0, None
    f.seek(0)
    while True:
        header = f.read(tarfile.BLOCKSIZE)
        if len(header) < tarfile.BLOCKSIZE:
            if offset == 0:
                return None  # not a tar at all: tarfile says so
            ended_early = "the shard ended early"
            break
        if header == bytes(tarfile.BLOCKSIZE):  # the end-of-archive marker
            break
        size_field, kind = header[124:136], header[156:157]
        if kind in (b"x", b"g", b"L", b"K", b"S") or size_field[0] & 0x80 or not _checksum_matches(header):
            return None
        size = int(size_field.strip(b"\0 ") or b"0", 8)
        data_offset = offset + tarfile.BLOCKSIZE
        offset = data_offset + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        f.seek(offset)
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and header[345]:  # POSIX ustar's prefix (GNU keeps times there)
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        name = name.decode("utf-8", "surrogateescape")
        if kind not in (b"0", b"\0", b"7") or META_MEMBER.match(name):
            continue
        prefix, extension = base_plus_ext(name)
        if prefix is None:
            continue
        if prefix != key:
            key, index = prefix, index + 1
            if index >= piece.stop:
                break
            if index >= piece.start:
                samples.append([key, []])
        if index >= piece.start:
            members = samples[-1][1]
            if any(extension.lower() == seen for seen, _, _ in members):
                ended_early = f"{name}: a second member with the same key and extension"
                samples.pop()
                break
            members.append([extension.lower(), data_offset, size])
    return samples, ended_early if len(samples) < piece.size else None


def _checksum_matches(header: bytes) -> bool:
    """The header's checksum: its bytes summed with the checksum field counted as spaces."""
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


def _lost(piece: Piece, produced: int, why: str | None) -> Iterator[tuple[str, Exception]]:
    """A truncated or empty shard: every sample it should still hold is one bad sample, so the
    epoch plan keeps its length and maxBadSamples decides whether to go on."""
    reason = ValueError(f"unreadable tar from here on ({why or 'the shard ended early'}; truncated or corrupt shard?)")
    for missing in range(piece.start + produced, piece.stop):
        yield f"#{missing}", reason


def _read_tar(f, piece: Piece) -> Iterator[tuple[str, dict]]:
    from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

    produced, errors = 0, []

    def stop_on_error(exn: Exception) -> bool:
        errors.append(exn)
        return False

    try:
        if piece.start:
            keys_seen, previous = 0, None
            for member in tarfile.open(fileobj=f, mode="r:"):
                key = base_plus_ext(member.name)[0]
                if member.isreg() and key not in (None, previous) and not META_MEMBER.match(member.name):
                    if keys_seen == piece.start:
                        f.seek(member.offset)
                        break
                    keys_seen, previous = keys_seen + 1, key
        files = tar_file_expander([{"url": piece.url, "stream": f}], handler=stop_on_error)
        for sample in islice(group_by_keys(files, handler=stop_on_error), piece.size):
            produced += 1
            yield sample["__key__"], sample
    except (tarfile.TarError, OSError, EOFError) as exc:
        errors.append(exc)
    yield from _lost(piece, produced, str(errors[0]) if errors else None)


def _read_parquet(f, piece: Piece) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(f)
    row = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if row + rows > piece.start and row < piece.stop:
            for i, record in enumerate(parquet.read_row_group(group).to_pylist(), start=row):
                if piece.start <= i < piece.stop:
                    yield str(i), record
        row += rows


def _read_arrow(piece: Piece) -> Iterator[tuple[str, dict]]:
    features = _hf_features(piece.url.rsplit("/", 1)[0])
    with _arrow_batches(piece.url) as batches:
        row = 0
        for batch in batches:
            lo, hi = max(piece.start - row, 0), min(piece.stop - row, batch.num_rows)
            if lo < hi:
                for i, record in enumerate(batch.slice(lo, hi - lo).to_pylist(), start=row + lo):
                    yield str(i), features.decode_example(record)
            row += batch.num_rows
            if row >= piece.stop:
                return


def _read_lines(kind: str, text, piece: Piece) -> Iterator[tuple[str, Any]]:
    import csv

    lines = (line for line in text if line.strip())
    if kind == "csv":
        header = next(csv.reader([next(lines)]))
    for i, line in enumerate(islice(lines, piece.start, piece.stop), start=piece.start):
        try:
            if kind == "csv":
                yield str(i), dict(zip(header, next(csv.reader([line])), strict=True))
            else:
                yield str(i), json.loads(line)
        except ValueError as exc:
            yield str(i), exc


# ---------------------------------------------------------------- decoding into tensors


@dataclass
class Decoder:
    """Raw record → (model input, label index); picklable so workers can decode."""

    task: str
    text_field: str
    label_field: str
    image_field: str
    classes: tuple[str, ...]
    transform: Callable | None = None  # image transform (encoded bytes or PIL → CHW uint8 tensor)

    def __call__(self, record: Any) -> tuple[Any, int]:
        if isinstance(record, Exception):
            raise record
        label = self._label(record)
        if self.task == "image-classification":
            return self._image(record), label
        return self._text(record), label

    def _label(self, record: dict) -> int:
        for name in ("cls", self.label_field):
            if name in record:
                raw = record[name]
                break
        else:
            meta = _json_member(record)
            if self.label_field not in meta:
                raise ValueError(f"no label ('cls' or '{self.label_field}') in the sample")
            raw = meta[self.label_field]
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8").strip()
        if isinstance(raw, str) and raw in self.classes:
            return self.classes.index(raw)
        value = int(raw)
        if not 0 <= value < len(self.classes):
            raise ValueError(f"label {value} outside 0..{len(self.classes) - 1}")
        return value

    def _image(self, record: dict):
        for name in (self.image_field, *IMAGE_EXTS):
            if (data := record.get(name)) is not None:
                return self.transform(data)  # decodes now: a truncated file fails here, with its key
        raise ValueError(f"no image member ({', '.join(IMAGE_EXTS)}) in the sample")

    def _text(self, record: dict) -> str:
        for name in ("txt", self.text_field):
            if name in record:
                value = record[name]
                return value.decode("utf-8") if isinstance(value, bytes) else str(value)
        meta = _json_member(record)
        if self.text_field not in meta:
            raise ValueError(f"no text ('txt' or '{self.text_field}') in the sample")
        return str(meta[self.text_field])


def _json_member(record: dict) -> dict:
    raw = record.get("json")
    return json.loads(raw) if isinstance(raw, (bytes, str)) else {}


# ---------------------------------------------------------------- the torch side


class _EpochStream(IterableDataset):
    """The epoch `Stream.loader` asked for last, for one rank: worker i runs task i (the plan
    already rotated the tasks). The workers live as long as the stream; at the start of each
    epoch each plans it again from `where` (epoch, start batch), memory it shares with the
    training process, which writes it before it asks for the epoch's batches."""

    def __init__(self, kind: str, plan: Callable[..., tuple[int, list[WorkerTask]]], where: torch.Tensor,
                 decoder: Decoder, collate: Callable):
        self.kind, self.plan, self.where, self.decoder, self.collate = kind, plan, where, decoder, collate

    def __iter__(self):
        epoch, start_batch = self.where.tolist()
        _, tasks = self.plan(epoch=epoch, start_batch=start_batch)
        info = get_worker_info()
        tasks = tasks if info is None else [tasks[info.id]] if info.id < len(tasks) else []
        for task in tasks:
            yield from self._run(task)

    def _run(self, task: WorkerTask):
        batches = list(task_positions(task))
        if not batches:
            return
        first = min(min(b) for b in batches)
        records = self._records(task, first)
        held: dict[int, tuple[str, str, Any]] = {}

        def take(pos: int) -> tuple[str, str, Any]:
            while pos not in held:
                at, shard, key, record = next(records)
                held[at] = (shard, key, record)
            return held.pop(pos)

        for number, positions in enumerate(batches, start=task.first_batch):
            seed_augmentation(task.window_seed, number)
            yield decode_batch(self.decoder, self.collate, [take(pos) for pos in positions])

    def _records(self, task: WorkerTask, first: int) -> Iterator[tuple[int, str, str, Any]]:
        """Records of the task's run from position `first` on, numbered by position."""
        offset = 0
        for piece in task.pieces:
            if offset + piece.size > first:
                skip = max(0, first - offset)
                part = dataclasses.replace(piece, start=piece.start + skip)
                for at, (key, record) in enumerate(read_piece(self.kind, part), start=offset + skip):
                    yield at, piece.url, key, record
            offset += piece.size


def decode_batch(decoder: Decoder, collate: Callable, records: list[tuple[str, str, Any]]) -> tuple[Any, list[tuple[str, str]]]:
    """(collated batch, or None when every sample is bad; the bad samples as (source, error))
    of (shard, key, record) triples: bad samples travel beside the batch, to be counted."""
    inputs, labels, bad = [], [], []
    for shard, key, record in records:
        try:
            x, y = decoder(record)
        except Exception as exc:  # noqa: BLE001 - any decode failure is bad data
            bad.append((f"shard {shard} key {key}", f"{type(exc).__name__}: {exc}"))
            continue
        inputs.append(x)
        labels.append(y)
    return (collate(inputs, labels) if inputs else None), bad


class EpochBatches:
    """Batches of one epoch from (batch, bad samples) pairs; records the bad samples in the
    training process (the Ray Data ingest of graft_trainer.ray_train uses it too)."""

    def __init__(self, loader: Iterable[tuple[Any, list[tuple[str, str]]]], length: int, stream: "Stream"):
        self._loader, self._length, self._stream = loader, length, stream

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        return delivered(self._loader, self._stream.bad)


@dataclass
class Stream:
    """What `graft_trainer.data` gets for a streamed split: `.loader(epoch, start_batch)`."""

    source_kind: str
    pieces: tuple[Piece, ...]
    classes: list[str]
    batch_size: int
    seed: int
    rank: int
    world_size: int
    num_workers: int
    shuffle: bool
    decoder: Decoder
    collate: Callable
    bad: dict[str, str] = field(default_factory=dict)  # source (shard and key) → error
    # The long-lived loader: plan_rank for this rank (epoch and start batch left open), the
    # (epoch, start batch) its workers read, and the DataLoader, made on the first epoch.
    _plan: Callable[..., tuple[int, list[WorkerTask]]] = field(init=False, repr=False, compare=False)
    _where: torch.Tensor = field(init=False, repr=False, compare=False)
    _batches: DataLoader | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._plan = functools.partial(
            plan_rank, self.pieces, seed=self.seed, rank=self.rank, world_size=self.world_size,
            batch_size=self.batch_size, workers=max(1, self.num_workers), shuffle=self.shuffle)
        self._where = torch.zeros(2, dtype=torch.int64).share_memory_()

    @property
    def num_samples(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def batches_per_epoch(self) -> int:
        return batches_for(self.num_samples, self.world_size, self.batch_size)

    def loader(self, epoch: int, start_batch: int = 0) -> EpochBatches:
        """Batches of `epoch` from `start_batch` on. One epoch at a time: the loader workers
        live as long as the stream and serve the epoch asked for last."""
        n_batches, tasks = self._plan(epoch=epoch, start_batch=start_batch)
        self._where[:] = torch.tensor((epoch, start_batch))
        if self._batches is None:
            workers = len(tasks) if self.num_workers else 0  # the same every epoch
            self._batches = DataLoader(
                _EpochStream(self.source_kind, self._plan, self._where, self.decoder, self.collate),
                batch_size=None, num_workers=workers, collate_fn=_as_collated,
                persistent_workers=workers > 0,  # see graft_trainer.data.SplitData.loader
                pin_memory=torch.cuda.is_available(),
                prefetch_factor=4 if workers else None,
                generator=torch.Generator().manual_seed(self.seed),  # see seed_augmentation
            )
        return EpochBatches(self._batches, max(0, n_batches - start_batch), self)


def _as_collated(batch):
    """The stream's batches are collated already: the DataLoader's default would walk every
    label again, looking for numpy arrays."""
    return batch


def build_stream(job: FineTuneJob, split: str, rank: int, world_size: int) -> Stream:
    """The streamed `split` ("train" | "validation") of a job for one rank of `world_size`."""
    data = job.spec.data
    source = discover(data.train, data.format, data.label_field)
    if split == "validation" and data.validation:
        pieces = discover(data.validation, data.format, data.label_field).pieces
    elif data.validation:
        pieces = source.pieces
    else:
        pieces = holdout(source.pieces, data.validation_fraction)[split == "validation"]
    if split == "train" and data.limit:
        pieces = take(pieces, 0, data.limit)
    classes = _classes(job, source)
    train = split == "train"
    from graft_trainer.data import stream_encoders  # the map-style transforms and tokenizer

    transform, collate = stream_encoders(job, train=train)
    decoder = Decoder(job.spec.task, data.text_field, data.label_field, data.image_field,
                      tuple(classes), transform)
    return Stream(
        source.kind, pieces, classes, job.spec.training.batch_size, job.spec.training.seed,
        rank, world_size, data.num_workers, train, decoder, collate,
    )


def _classes(job: FineTuneJob, source: Source) -> list[str]:
    if source.classes:
        return list(source.classes)
    if job.spec.head.num_classes:
        return [str(i) for i in range(job.spec.head.num_classes)]
    raise SpecError([
        "spec.data: streamed data needs its class names: write an index.json beside the "
        "shards (`graft data pack` does) or set spec.head.numClasses"
    ])
