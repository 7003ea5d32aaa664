"""Labelled data → batches for one rank: reading, splitting, transforms, tokenisation, sharding.

Every split is a `SplitData` with `.classes`, `.batches_per_epoch` and
`.loader(epoch, start_batch)`. The loop only ever talks to that interface, so the map-style
data here and the streamed shards of `graft_trainer.streaming` are interchangeable, and resuming
mid-epoch is a position (epoch, batches consumed), never a replay: `start_batch` skips indices
before anything is read.

Sharding follows `DistributedSampler`: one permutation per (seed, epoch) shared by all ranks,
padded to a multiple of the world size so every rank runs the same number of steps, then
strided by rank. Validation is strided WITHOUT padding, so metrics summed over ranks count
each sample exactly once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from graft.spec import FineTuneJob, SpecError
from graft_trainer.builtin import resolve

log = logging.getLogger("graft.data")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Records:
    """A split held in memory: raw inputs (image paths / PIL images / texts) and label indices."""

    inputs: list[Any]
    labels: list[int]


@dataclass
class Splits:
    train: "SplitData"
    validation: "SplitData"
    classes: list[str]


# ------------------------------------------------------------------------------- reading


def read_records(location: str, job: FineTuneJob, where: str, *, labels_optional: bool = False):
    """(inputs, raw labels) of one location, in a stable order.

    With `labels_optional` (data.target: DANN never reads its labels) the raw labels are None
    when the data has none: a folder of images without class sub-folders, or a table without
    the label column."""
    data = job.spec.data
    path = Path(resolve(location))
    if not path.exists():
        raise SpecError([f"{where}: '{location}' does not exist; point it at your data"])
    if data.format == "imagefolder":
        return _read_imagefolder(path, where, labels_optional)
    if data.format == "hf-disk":
        from datasets import load_from_disk

        dataset = load_from_disk(str(path))
        column = data.image_field if job.spec.task == "image-classification" else data.text_field
        return _columns(dataset, column, data.label_field, where, labels_optional)
    if job.spec.task == "image-classification":  # a CSV/JSONL manifest: image path + label per row
        paths, labels = _read_table(path, data.format, data.image_field, data.label_field, where, labels_optional)
        base = path if path.is_dir() else path.parent  # relative paths are relative to the manifest
        return [base / p for p in paths], labels
    return _read_table(path, data.format, data.text_field, data.label_field, where, labels_optional)


def _read_imagefolder(root: Path, where: str, labels_optional: bool = False) -> tuple[list[Path], list[str] | None]:
    images, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(class_dir.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(file)
                labels.append(class_dir.name)
    # --- unlabelled target data: images directly in the root, no class sub-folders
    if labels_optional and root.is_dir():
        loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if loose and images:  # ImageFolder would silently drop the loose ones
            raise SpecError([f"{where}: {root} has both class sub-folders and {len(loose)} images beside "
                             "them; keep one layout (<root>/<class>/<image>, or unlabelled <root>/<image>)"])
        if loose:
            return loose, None
    # --- end unlabelled target data
    if not images:
        raise SpecError([f"{where}: no images in class sub-folders of {root} (ImageFolder layout: <root>/<class>/<image>)"])
    return images, labels


def _read_table(path: Path, data_format: str, text_field: str, label_field: str, where: str,
                labels_optional: bool = False):
    from datasets import load_dataset

    files = sorted(str(p) for p in path.rglob(f"*.{data_format}")) if path.is_dir() else [str(path)]
    builder = "json" if data_format == "jsonl" else data_format
    dataset = load_dataset(builder, data_files=files, split="train")
    return _columns(dataset, text_field, label_field, f"{where} ({path})", labels_optional)


def _columns(dataset, input_field: str, label_field: str, where: str, labels_optional: bool = False):
    if labels_optional and input_field in dataset.column_names and label_field not in dataset.column_names:
        return list(dataset[input_field]), None  # unlabelled target data
    missing = [f for f in (input_field, label_field) if f not in dataset.column_names]
    if missing:
        raise SpecError([
            f"{where}: column(s) {missing} not found (columns: {dataset.column_names}); set "
            "data.textField / data.imageField / data.labelField"
        ])
    names = getattr(dataset.features[label_field], "names", None)  # ClassLabel columns
    labels = dataset[label_field]
    if names:
        labels = [names[i] for i in labels]
    return list(dataset[input_field]), labels


def class_names(raw_labels: Iterable[Any]) -> list[str]:
    """Sorted distinct labels as strings; numbers sort numerically ('2' before '10')."""
    distinct = set(raw_labels)
    if all(isinstance(v, (int, float)) or str(v).lstrip("-").isdigit() for v in distinct):
        return [str(v) for v in sorted(distinct, key=lambda v: int(v))]
    return sorted(str(v) for v in distinct)


def to_records(inputs: list[Any], raw_labels: list[Any], classes: list[str], where: str) -> Records:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({str(v) for v in raw_labels} - index.keys())
    if unknown:
        row = next(i for i, v in enumerate(raw_labels) if str(v) == unknown[0])
        sample = inputs[row] if isinstance(inputs[row], (str, Path)) and len(str(inputs[row])) < 200 else f"row {row}"
        raise SpecError([f"{where}: labels {unknown[:5]} are not among the training classes {classes[:10]} "
                         f"(first at {sample}); relabel or remove those samples, or add the class to spec.data.train"])
    return Records(inputs, [index[str(v)] for v in raw_labels])


def split_holdout(records: Records, fraction: float, seed: int) -> tuple[Records, Records]:
    """Stratified seeded hold-out: every class keeps `fraction` of its samples for validation."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(records.labels), generator=generator).tolist()
    per_class: dict[int, list[int]] = {}
    for i in order:
        per_class.setdefault(records.labels[i], []).append(i)
    held = {i for members in per_class.values() for i in members[: max(1, round(len(members) * fraction))]}
    train = [i for i in order if i not in held]
    validation = sorted(held)
    pick = lambda idx: Records([records.inputs[i] for i in idx], [records.labels[i] for i in idx])
    return pick(train), pick(validation)


def first_n(records: Records, n: int, seed: int) -> Records:
    """The first n samples of a seeded shuffle, so a sorted ImageFolder still yields every class."""
    order = torch.randperm(len(records.labels), generator=torch.Generator().manual_seed(seed)).tolist()[:n]
    return Records([records.inputs[i] for i in order], [records.labels[i] for i in order])


# --------------------------------------------------------------------- tensors and batches


def image_transform(job: FineTuneJob, train: bool) -> Callable:
    """An image (path, encoded bytes or PIL) → CHW uint8 tensor at data.imageSize; augmentations
    only when `train`.
    Scaling to float and normalising happen once per batch, in `to_device`."""
    import torchcodec.decoders  # noqa: F401  here, so each epoch's forked loader workers inherit it
    from torchvision.transforms import v2

    data = job.spec.data
    augmentations = [_augmentation(a, data.image_size) for a in data.augmentations] if train else []
    augment = v2.Compose(augmentations) if augmentations else None
    return ImageTransform("RGB" if data.grayscale_to_rgb else "L", data.image_size, augment)


@dataclass
class ImageTransform:
    """Decode, resize to data.imageSize, augment. The fixed steps are plain tensor calls, not
    v2 transforms: at 64 px, v2's per-call dispatch (ToImage, a Resize to the size the image
    already has) cost more than decoding."""

    mode: str  # "RGB" or "L"
    size: int
    augment: Callable | None = None

    def __call__(self, source) -> torch.Tensor:
        """`source`: an image file's path, its bytes or a PIL image."""
        tensor = decode_image(source, self.mode)
        if tensor.shape[-2:] != (self.size, self.size):
            from torchvision.transforms.v2 import functional

            tensor = functional.resize(tensor, [self.size, self.size], antialias=True)
        return self.augment(tensor) if self.augment else tensor


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIL_LUMA = torch.tensor((19595, 38470, 7471), dtype=torch.int32).view(3, 1, 1)  # PIL's RGB -> L, in 65536ths


def decode_image(source, mode: str) -> torch.Tensor:
    """An image file's path, its bytes or a PIL image -> uint8 (C, H, W) in `mode` ("RGB"/"L").

    8-bit PNGs and JPEGs go through TorchCodec, libpng and libjpeg-turbo straight into a
    tensor: at 64 px, PIL's objects and copies cost as much as the decoding. The pixels are
    PIL's (tests/trainer/test_data_and_spec.py). Every other file (16-bit PNG, CMYK JPEG,
    TIFF, ...), and one TorchCodec refuses, goes through PIL, whose OSError says what is wrong."""
    path = isinstance(source, (str, Path))
    data = Path(source).read_bytes() if path else source
    if isinstance(data, bytes) and (decoded := _decode_png_or_jpeg(data)) is not None:
        return _in_mode(decoded, mode)
    import io

    from PIL import Image

    image = source if isinstance(source, Image.Image) else Image.open(source if path else io.BytesIO(data))
    array = torch.from_numpy(np.array(image.convert(mode)))
    return array.permute(2, 0, 1) if array.dim() == 3 else array.unsqueeze(0)


def _decode_png_or_jpeg(data: bytes) -> torch.Tensor | None:
    """(C, H, W) with C = 1 or 3 plus any alpha, or None where PIL must decode."""
    from torchcodec.decoders import decode_jpeg, decode_png

    png = data.startswith(PNG_SIGNATURE)
    if not (png and len(data) > 24 and data[24] <= 8 or data.startswith(b"\xff\xd8\xff")):  # IHDR bit depth
        return None
    # The format is known and the bytes go in as a tensor (a writable copy: torch warns on
    # read-only buffers): decode_image's format sniffing and per-call warning filter cost a
    # third of a 64 px PNG's decoding.
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        decoded = (decode_png if png else decode_jpeg)(encoded, mode="UNCHANGED")
    except RuntimeError:
        return None
    channels = decoded.shape[0] if decoded.dim() == 3 else 0
    return decoded if channels in (1, 3) or png and channels in (2, 4) else None  # a JPEG's 4: CMYK


def _in_mode(image: torch.Tensor, mode: str) -> torch.Tensor:
    """What PIL's convert(mode) gives: alpha dropped, gray repeated, or RGB to PIL's luma."""
    if image.shape[0] in (2, 4):
        image = image[:-1]
    if mode == "RGB" and image.shape[0] == 1:
        return image.expand(3, -1, -1)
    if mode == "L" and image.shape[0] == 3:
        return ((image.int() * PIL_LUMA).sum(0, keepdim=True) + 0x8000 >> 16).to(torch.uint8)
    return image


def _augmentation(aug, size: int):
    from torchvision.transforms import v2

    return {
        "horizontalFlip": lambda: v2.RandomHorizontalFlip(aug.p),
        "verticalFlip": lambda: v2.RandomVerticalFlip(aug.p),
        "rotation": lambda: v2.RandomRotation(aug.degrees),
        "randomResizedCrop": lambda: v2.RandomResizedCrop(size, scale=aug.scale, antialias=True),
        "colorJitter": lambda: v2.ColorJitter(aug.strength, aug.strength, aug.strength),
        "randomErasing": lambda: v2.RandomErasing(aug.p),
        "gaussianBlur": lambda: v2.RandomApply([v2.GaussianBlur(3)], p=aug.p),
        "randomAffine": lambda: v2.RandomAffine(aug.degrees, scale=aug.scale),
    }[aug.name]()


@dataclass
class ImageCollate:
    """Stack uint8 images: a batch crosses from loader workers and to the GPU in a quarter of
    the bytes of float32; `to_device` scales and normalises it where it lands. The labels stay
    a list (see `delivered`). A picklable class, for DataLoader workers."""

    def __call__(self, inputs: list[torch.Tensor], labels: list[int]):
        # TorchCodec's pixels are (H, W, C) in memory under their (C, H, W) shape; numpy's
        # strided copy lays them out as (C, H, W) 1.7x faster than torch.stack (0.79 vs 1.37 ms
        # for 32 images at 160 px, 4 % of reading and decoding them).
        return leaving_worker(np.ascontiguousarray(np.stack([x.numpy() for x in inputs]))), labels


INLINE_BATCH_BYTES = 1 << 20


def leaving_worker(array: np.ndarray):
    """A collated array as it leaves a loader worker for the training process: up to 1 MiB as
    the array, copied inside the pickled message; larger as a tensor, which crosses as a
    shared-memory file of its own (set up, handed over on a new socket, mapped, unmapped).
    CPU per batch of 32 RGB images from 2 workers, array / tensor (bench/bench_batch_transfer.py):
    64 px (384 KiB) 0.54x, 96 px 0.78x, 128 px 0.87x, 160 px (2.4 MiB) 1.04x: the copies grow
    with the batch, the file's fixed cost does not. `to_device` takes either. In the training
    process itself (no workers): a tensor."""
    if get_worker_info() is not None and array.nbytes <= INLINE_BATCH_BYTES:
        return array
    return torch.from_numpy(array)


def delivered(pairs: Iterable[tuple[Any, list[tuple[str, str]]]], seen: dict[str, str]) -> Iterator:
    """The loop's batches from a loader's (collated batch or None, bad samples) pairs, for
    every reader: bad samples recorded in `seen`, labels made a tensor here. They cross from
    loader workers as a list, pickled beside the batch: a tensor would cross as a shared-memory
    file of its own, which at 64 px cost a third of what the images' file did."""
    for batch, bad in pairs:
        record_bad(seen, bad)
        if batch is None:  # skipping it would leave this rank one step short of the others
            raise BadDataError(dict(bad), "every sample of a batch is unreadable")
        inputs, labels = batch
        yield inputs, torch.tensor(labels)


def to_device(inputs, device):
    """A batch on `device` (as tensors: small batches leave loader workers as numpy arrays, see
    `leaving_worker`), images normalised there: one vectorised op per batch instead of three
    per image (per image, float conversion and normalisation cost more than decoding a 64 px
    PNG)."""
    if isinstance(inputs, dict):
        return {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}
    inputs = torch.as_tensor(inputs).to(device, non_blocking=True)
    return normalize_images(inputs) if inputs.dtype == torch.uint8 else inputs


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 normalised as the backbones were pretrained: ImageNet's
    mean and std, 0.5 and 0.5 for grayscale."""
    shift, scale = _normalisation(images.shape[1], images.device)
    return images.to(torch.float32).sub_(shift).div_(scale)


@functools.cache
def _normalisation(channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Made once per device: on a GPU each new constant is a copy the step waits for."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    return (torch.tensor([255.0 * m for m in mean], device=device).view(1, -1, 1, 1),
            torch.tensor([255.0 * s for s in std], device=device).view(1, -1, 1, 1))


@dataclass
class TextCollate:
    """Tokenise a batch, padded to its own longest text (dynamic padding), truncated at maxLength."""

    tokenizer: Any
    max_length: int

    def __call__(self, texts: list[str], labels: list[int]):
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        return {name: leaving_worker(ids) for name, ids in encoded.items()}, labels  # a list, as ImageCollate's


def load_tokenizer(job: FineTuneJob):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(job.spec.backbone.arch))


def stream_encoders(job: FineTuneJob, train: bool) -> tuple[Callable | None, Callable]:
    """(image transform or None, collate(inputs, labels)) — shared with graft_trainer.streaming."""
    if job.spec.task == "image-classification":
        return image_transform(job, train), ImageCollate()
    return None, TextCollate(load_tokenizer(job), job.spec.data.max_length)


class RecordDataset(Dataset):
    """Records → (tensor or text, label); images are read lazily, one file per item."""

    def __init__(self, records: Records, transform: Callable | None):
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records.labels)

    def __getitem__(self, i: int):
        item = self.records.inputs[i]
        if self.transform is not None:
            try:
                item = self.transform(item)
            except OSError as exc:  # unreadable or corrupt file (PIL's UnidentifiedImageError too)
                return BadSample(str(item), str(exc)), self.records.labels[i]
        return item, self.records.labels[i]


class BadSample(NamedTuple):
    source: str
    error: str


class BadDataError(RuntimeError):
    """Data the job cannot train on, for every reader (files, shards, features): more bad
    samples than spec.data.maxBadSamples over all ranks of the job, or a batch with no good
    sample left. Names each sample's file or shard and row/key (the first few; report.json
    and the logs have all)."""

    SHOWN = 10

    def __init__(self, bad: dict[str, str], why: str):
        self.bad = dict(bad)
        lines = [f"  - {source}: {error}" for source, error in list(self.bad.items())[: self.SHOWN]]
        if len(self.bad) > self.SHOWN:
            lines.append(f"  - ... and {len(self.bad) - self.SHOWN} more")
        super().__init__("\n".join([why, *lines]))


def over_limit(bad: dict[str, str], limit: int) -> BadDataError:
    return BadDataError(bad, f"{len(bad)} bad samples over all ranks exceed spec.data.maxBadSamples={limit}; "
                             "fix or remove them, or raise data.maxBadSamples to skip them")


def record_bad(seen: dict[str, str], bad: Iterable[tuple[str, str]]) -> None:
    """Remember bad samples (source → error); log the first few of a split, count the rest."""
    for source, error in bad:
        if source in seen:
            continue
        if len(seen) < BadDataError.SHOWN:
            log.warning("bad sample skipped: %s: %s", source, error)
        elif len(seen) == BadDataError.SHOWN:
            log.warning("more bad samples: counted against data.maxBadSamples, listed in report.json")
        seen[source] = error


@dataclass
class BatchCollate:
    """Collate the good samples of a batch; hand the bad ones back beside it to be counted."""

    collate: Callable

    def __call__(self, batch: list[tuple[Any, int]]):
        good = [(x, y) for x, y in batch if not isinstance(x, BadSample)]
        bad = [x for x, _ in batch if isinstance(x, BadSample)]
        return (self.collate(*map(list, zip(*good))) if good else None), bad


class _EpochPlan:
    """The batch sampler of a split's DataLoader, run in the training process: the batches of
    the epoch `SplitData.loader` asked for last, as (augmentation key, sample indices)."""

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, ...], list[int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class _SeededBatches(Dataset):
    """A split's samples read a batch at a time, the batch's augmentations drawn from its key."""

    dataset: RecordDataset

    def __getitems__(self, batch: tuple[tuple[int, ...], list[int]]) -> list:
        key, indices = batch
        seed_augmentation(*key)
        return [self.dataset[i] for i in indices]


@dataclass
class SplitData:
    """One split for one rank: the object the training loop iterates, epoch by epoch."""

    dataset: RecordDataset
    collate: Callable
    classes: list[str]
    batch_size: int
    rank: int
    world_size: int
    seed: int
    train: bool
    num_workers: int = 0
    sample_weights: torch.Tensor | None = None  # balance: sampler
    label_counts: list[int] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)  # corrupt samples seen: source → error (the loop
    # sums them over ranks against data.maxBadSamples at every step)
    _plan: _EpochPlan = field(default_factory=_EpochPlan, init=False, repr=False, compare=False)
    _batches: DataLoader | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.indices(0)) // self.batch_size)

    def indices(self, epoch: int) -> list[int]:
        """This rank's sample indices for `epoch` (see the module docstring)."""
        n = len(self.dataset)
        if not self.train:
            return list(range(self.rank, n, self.world_size))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(n, generator=generator).tolist()
        padded = -(-n // self.world_size) * self.world_size
        order += order[: padded - n]
        return order[self.rank :: self.world_size]

    def loader(self, epoch: int, start_batch: int = 0) -> Iterator:
        """Batches of `epoch`, starting after the first `start_batch` (never read); bad samples
        are skipped and recorded in `bad`. One epoch at a time: the loader workers live as long
        as the split and serve the epoch asked for last."""
        order, size = self.indices(epoch), self.batch_size
        self._plan.batches = [((self.seed, epoch, self.rank, b), order[b * size:(b + 1) * size])
                              for b in range(start_batch, -(-len(order) // size))]
        if self._batches is None:
            self._batches = DataLoader(
                _SeededBatches(self.dataset),
                batch_sampler=self._plan,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,  # forked once: two cost ≈ 75 ms CPU a start
                collate_fn=BatchCollate(self.collate),
                pin_memory=torch.cuda.is_available(),  # page-locked: to_device copies to the GPU asynchronously
                # Own generator: creating an iterator must not draw from the global RNG, or a
                # resumed run would see a different dropout/augmentation sequence.
                generator=torch.Generator().manual_seed(self.seed),
            )
        yield from delivered(self._batches, self.bad)


def seed_augmentation(*key: Any) -> None:
    """In a loader worker: this batch's random augmentations come from `key` (seed, epoch, rank
    and batch) alone, not from what the long-lived worker drew for earlier epochs, so a run
    resumed at any batch augments the rest as the uninterrupted run did. Without workers the
    training process's RNG draws them, as it draws dropout, and the checkpoint restores it.
    Only the CPU generator is seeded: torch.manual_seed visits every device type, 86 us a call
    (2.7 us a sample at batch 32)."""
    if get_worker_info() is None:
        return
    seed = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")
    torch.default_generator.manual_seed(seed)
    random.seed(seed)


# ------------------------------------------------------------------------------ assembly


def build_splits(job: FineTuneJob, rank: int, world_size: int) -> Splits:
    """Train and validation data of this rank, with class names inferred from the train split."""
    data = job.spec.data
    if data.format == "webdataset" or data.streaming:
        return _streamed_splits(job, rank, world_size)
    seed = job.spec.training.seed
    inputs, raw = read_records(data.train, job, "spec.data.train")
    classes = class_names(raw)
    if job.spec.head.num_classes and job.spec.head.num_classes != len(classes):
        raise SpecError([
            f"spec.head.numClasses: {job.spec.head.num_classes} but the training data has "
            f"{len(classes)} classes {classes[:10]}; remove numClasses to infer it"
        ])
    train = to_records(inputs, raw, classes, "spec.data.train")
    if data.validation:
        v_inputs, v_raw = read_records(data.validation, job, "spec.data.validation")
        validation = to_records(v_inputs, v_raw, classes, "spec.data.validation")
    else:
        train, validation = split_holdout(train, data.validation_fraction, seed)
    if data.limit:
        train = first_n(train, data.limit, seed)
    transform_train, collate = stream_encoders(job, train=True)
    transform_eval, _ = stream_encoders(job, train=False) if transform_train else (None, None)
    counts = Counter(train.labels)
    label_counts = [counts.get(i, 0) for i in range(len(classes))]
    weights = None
    if data.balance == "sampler":
        weights = torch.tensor([1.0 / label_counts[y] for y in train.labels], dtype=torch.double)
    common = dict(
        collate=collate, classes=classes, batch_size=job.spec.training.batch_size, rank=rank,
        world_size=world_size, seed=seed, num_workers=data.num_workers,
    )
    log.info("data: %d train / %d validation samples, %d classes", len(train.labels), len(validation.labels), len(classes))
    return Splits(
        train=SplitData(RecordDataset(train, transform_train), train=True, sample_weights=weights,
                        label_counts=label_counts, **common),
        validation=SplitData(RecordDataset(validation, transform_eval), train=False, **common),
        classes=classes,
    )


def _streamed_splits(job: FineTuneJob, rank: int, world_size: int) -> Splits:
    try:
        from graft_trainer.streaming import build_stream
    except ImportError as exc:  # the streaming module ships separately in some images
        raise SpecError([f"spec.data.streaming: streaming support is not installed ({exc})"]) from None
    train = build_stream(job, "train", rank, world_size)
    validation = build_stream(job, "validation", rank, world_size)
    return Splits(train=train, validation=validation, classes=list(train.classes))


def loss_weights(splits: Splits, job: FineTuneJob) -> torch.Tensor | None:
    """Inverse-frequency class weights (mean 1) when spec.data.balance is 'loss'."""
    if job.spec.data.balance != "loss":
        return None
    counts = torch.tensor(splits.train.label_counts, dtype=torch.float32).clamp(min=1)
    weights = counts.sum() / (len(counts) * counts)
    return weights

