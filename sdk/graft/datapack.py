"""`graft data pack`: turn an ImageFolder or a JSONL file into WebDataset shards + index.json.

Why: streaming trainers read big sequential tar files far faster than millions of small
files, and the index (samples per shard, class names) lets every rank plan its epoch, equalise
batch counts and resume mid-epoch without opening a shard. The WebDataset format is plain tar
(`<key>.<ext>` members grouped by key), so this module writes it with `tarfile`: the
`webdataset` package imports torch, which the SDK must not.

Samples are shuffled (seeded) before writing, so any contiguous run of samples, e.g. the tail
a trainer holds out for validation, is a random subset. Image bytes are copied as they are
(no re-encoding); each sample gets `<key>.cls` (class index) and `<key>.json` (class name and
where it came from).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import ByteSize, Field, TypeAdapter, ValidationError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff"}
SHARD_PATTERN = "shards-{:06d}.tar"
_SHARD_SIZE = TypeAdapter(Annotated[ByteSize, Field(gt=0)])


def parse_size(size: str | int) -> int:
    """'1GB', '512MiB', '200kb' or a byte count → bytes, as pydantic's ByteSize reads them."""
    try:
        return _SHARD_SIZE.validate_python(size)
    except ValidationError:
        raise ValueError(f"shard size {size!r}: use a positive byte count or a unit, e.g. '1GB', "
                         "'256MiB'") from None


@dataclass(frozen=True)
class _Sample:
    """One sample to write: where its payload comes from and its class name."""

    label: str
    path: Path | None = None  # image file (ImageFolder)
    text: str | None = None  # text (JSONL)
    origin: str = ""


def pack(
    src: str | Path,
    dst: str | Path,
    shard_size: str | int = "1GB",
    *,
    text_field: str = "text",
    label_field: str = "label",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write `dst/shards-000000.tar ...` and `dst/index.json`; return the index.

    `src` is an ImageFolder (one sub-directory per class) or a JSONL file with `text_field`
    and `label_field` on every line."""
    src, dst = Path(src), Path(dst)
    limit = parse_size(shard_size)
    if src.is_dir():
        kind, samples = "image", _imagefolder(src)
    elif src.is_file():
        kind, samples = "text", _jsonl(src, text_field, label_field)
    else:
        raise FileNotFoundError(f"{src}: neither an ImageFolder directory nor a JSONL file")
    if not samples:
        raise ValueError(f"{src}: no samples found")
    classes = sorted({s.label for s in samples}, key=_natural)
    random.Random(seed).shuffle(samples)
    dst.mkdir(parents=True, exist_ok=True)
    shards = _write_shards(samples, classes, dst, limit, kind, progress)
    index = {
        "format": "webdataset",
        "version": 1,
        "kind": kind,
        "classes": classes,
        "total": len(samples),
        "classCounts": {c: sum(s.label == c for s in samples) for c in classes},
        "shards": shards,
        "shardSize": limit,
        "seed": seed,
        "source": str(src),
    }
    (dst / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _natural(name: str):
    """'2' before '10' for numeric class names; names otherwise sort as text."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _imagefolder(root: Path) -> list[_Sample]:
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTS and path.is_file():
                samples.append(_Sample(class_dir.name, path=path, origin=str(path.relative_to(root))))
    return samples


def _jsonl(path: Path, text_field: str, label_field: str) -> list[_Sample]:
    samples = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row[text_field], row[label_field]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{number}: needs a JSON object with '{text_field}' and "
                    f"'{label_field}' ({exc})"
                ) from None
            samples.append(_Sample(str(label), text=str(text), origin=f"{path.name}:{number}"))
    return samples


def _write_shards(samples, classes, dst: Path, limit: int, kind: str, progress: bool) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class_index = {c: i for i, c in enumerate(classes)}
    shards: list[dict] = []
    tar, written, count, counts = None, 0, 0, {}
    columns = (TextColumn("packing {task.fields[shard]}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("pack", total=len(samples), shard="")
        for number, sample in enumerate(samples):
            members = _members(number, sample, class_index[sample.label])
            size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
            if tar is None or (count and written + size > limit):
                if tar is not None:
                    tar.close()
                    shards.append(_shard_entry(dst, len(shards), count, counts))
                name = SHARD_PATTERN.format(len(shards))
                tar, written, count, counts = tarfile.open(dst / name, "w", format=tarfile.USTAR_FORMAT), 0, 0, {}
                bar.update(task, shard=name)
            for member_name, data in members:
                info = tarfile.TarInfo(member_name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible shards
                tar.addfile(info, io.BytesIO(data))
            written, count = written + size, count + 1
            counts[sample.label] = counts.get(sample.label, 0) + 1
            bar.update(task, advance=1)
        tar.close()
        shards.append(_shard_entry(dst, len(shards), count, counts))
    return shards


def _members(number: int, sample: _Sample, label: int) -> list[tuple[str, bytes]]:
    key = f"{number:09d}"
    meta = json.dumps({"label": sample.label, "origin": sample.origin}).encode()
    if sample.path is not None:
        payload = (f"{key}{sample.path.suffix.lower()}", sample.path.read_bytes())
    else:
        payload = (f"{key}.txt", sample.text.encode("utf-8"))
    return [payload, (f"{key}.cls", str(label).encode()), (f"{key}.json", meta)]


def _shard_entry(dst: Path, number: int, count: int, counts: dict[str, int]) -> dict:
    name = SHARD_PATTERN.format(number)
    return {"name": name, "count": count, "bytes": (dst / name).stat().st_size, "classCounts": counts}
