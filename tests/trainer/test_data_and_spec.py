"""From a spec to tensors: what the trainer accepts, what it rejects (and how it says so), and
how data is split, sharded, augmented, balanced and tokenised. Real data: sklearn digits and
VADER words; small CSV/HF files written by the tests themselves where a format needs one."""

from __future__ import annotations

import multiprocessing
import subprocess
from pathlib import Path
from collections import Counter

import pytest
import torch

from graft.datapack import pack
from graft.spec import SpecError, load_spec
from graft_trainer.builtin import resolve
from graft_trainer.data import build_splits, to_device
from graft_trainer.models import build_model
from trainer_jobs import PYTHON, REPO, digits_doc, job_of, text_doc, trainer_env, write_spec


def test_good_image_spec_infers_classes_and_builds_a_matching_model(tmp_path):
    job = job_of(digits_doc(tmp_path, data={"limit": None}))
    splits = build_splits(job, rank=0, world_size=1)
    assert splits.classes == ["0", "1", "2", "3", "4"]
    model = build_model(job, len(splits.classes))
    images, labels = next(iter(splits.train.loader(0)))
    assert images.shape == (16, 3, 16, 16) and model(to_device(images, "cpu")).shape == (16, 5)
    # stratified hold-out: every class is in validation in proportion
    held = Counter(splits.validation.dataset.records.labels)
    assert set(held) == set(range(5)) and all(15 <= n <= 21 for n in held.values())


@pytest.mark.parametrize(
    "override, field",
    [
        ({"backbone": {"name": "timm/no_such_net"}}, "spec.backbone"),
        ({"data": {"train": "/nonexistent/digits"}}, "spec.data.train"),
        ({"head": {"numClasses": 7}}, "spec.head.numClasses"),
        ({"backbone": {"weights": "/nonexistent/weights.safetensors"}}, "spec.backbone.weights"),
    ],
)
def test_bad_specs_fail_naming_the_field(tmp_path, override, field):
    job = job_of(digits_doc(tmp_path, **override))
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        splits = build_splits(job, 0, 1)
        build_model(job, len(splits.classes))


def test_resource_quantities_a_pod_could_not_carry_are_refused_naming_the_field(tmp_path):
    """Caught here (and by the CRD's pattern), not when the API server refuses the child."""
    for bad in ("16 GB", "lots", "-1", "4\n"):
        with pytest.raises(SpecError, match=r"spec\.resources\.memory: must be a Kubernetes quantity"):
            job_of(digits_doc(tmp_path, resources={"memory": bad}))
    resources = job_of(digits_doc(tmp_path, resources={"cpu": "500m", "memory": "1.5Gi"})).spec.resources
    assert (resources.cpu, resources.memory) == ("500m", "1.5Gi")


def test_cli_rejects_an_invalid_spec_with_exit_code_2_and_one_line_per_problem(tmp_path):
    doc = digits_doc(tmp_path, training={"batchSize": 0, "optimiser": "adamw"})
    result = subprocess.run([PYTHON, "-m", "graft_trainer", str(write_spec(doc, tmp_path / "bad.yaml"))],
                            cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "spec.training.batchSize" in result.stderr and "did you mean 'optimizer'" in result.stderr


def test_rank_shards_cover_the_epoch_evenly_and_validation_exactly_once(tmp_path):
    job = job_of(digits_doc(tmp_path, data={"limit": 50}))
    ranks = [build_splits(job, rank, 4) for rank in range(4)]
    train = [r.train.indices(epoch=3) for r in ranks]
    assert len({len(t) for t in train}) == 1  # same step count on every rank (DDP never waits)
    assert set().union(*train) == set(range(50))  # padding repeats, never drops, samples
    assert train != [r.train.indices(epoch=4) for r in ranks]  # reshuffled per epoch
    validation = [r.validation.indices(0) for r in ranks]
    assert sorted(sum(validation, [])) == list(range(len(ranks[0].validation.dataset)))


def test_resuming_mid_epoch_skips_exactly_the_consumed_batches(tmp_path):
    splits = build_splits(job_of(digits_doc(tmp_path)), 0, 1)
    full = [labels for _, labels in splits.train.loader(epoch=2)]
    resumed = [labels for _, labels in splits.train.loader(epoch=2, start_batch=3)]
    assert len(resumed) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed))


def test_augmentations_apply_to_training_only(tmp_path):
    job = job_of(digits_doc(tmp_path, data={"augmentations": [{"name": "rotation", "degrees": 40}]}))
    splits = build_splits(job, 0, 1)
    torch.manual_seed(0)
    train_a, train_b = splits.train.dataset[0][0], splits.train.dataset[0][0]
    val_a, val_b = splits.validation.dataset[0][0], splits.validation.dataset[0][0]
    assert not torch.equal(train_a, train_b)
    assert torch.equal(val_a, val_b)


@pytest.mark.parametrize("packed", [False, True], ids=["imagefolder", "shards"])
def test_loader_workers_outlive_the_epoch_and_augment_as_a_resumed_run_would(tmp_path, packed):
    """numWorkers 2 start once per split, not every epoch. Epoch 1 from the workers that served
    epoch 0 holds, from batch 3 on, what the fresh workers of a run resumed at (epoch 1, batch 3)
    give: the same samples with the same random crops and flips."""
    data = {"numWorkers": 2, "augmentations": [{"name": "randomResizedCrop"}, {"name": "horizontalFlip"}]}
    if packed:
        pack(resolve("builtin://sklearn-digits?classes=0-4"), tmp_path / "shards", "100KB", progress=False)
        data.update(format="webdataset", train=str(tmp_path / "shards"))
    job = job_of(digits_doc(tmp_path, data=data))
    running = build_splits(job, 0, 1).train
    assert len(list(running.loader(0))) == running.batches_per_epoch
    workers = {child.pid for child in multiprocessing.active_children()}
    epoch = [(to_device(images, "cpu"), labels) for images, labels in running.loader(1)]
    assert {child.pid for child in multiprocessing.active_children()} == workers and len(workers) == 2

    resumed = [(to_device(images, "cpu"), labels) for images, labels in build_splits(job, 0, 1).train.loader(1, 3)]
    assert len(resumed) == len(epoch) - 3 > 0
    for (images, labels), (again, again_labels) in zip(epoch[3:], resumed):
        assert torch.equal(labels, again_labels) and torch.equal(images, again)


@pytest.mark.parametrize("grayscale_to_rgb, size", [(True, 16), (True, 8), (False, 16)])
def test_batches_are_normalised_as_torchvisions_per_image_pipeline_would(tmp_path, grayscale_to_rgb, size):
    """Images travel as uint8 and are normalised per batch where they land (`to_device`): the
    model must still get what a pretrained backbone expects, i.e. what ToImage, Resize, ToDtype
    and Normalize give image by image."""
    from PIL import Image
    from torchvision.transforms import v2

    job = job_of(digits_doc(tmp_path, data={"grayscaleToRgb": grayscale_to_rgb, "imageSize": size}))
    splits = build_splits(job, 0, 1)
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if grayscale_to_rgb else ((0.5,), (0.5,))
    reference = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    records = splits.validation.dataset.records
    mode = "RGB" if grayscale_to_rgb else "L"
    expected = torch.stack([reference(Image.open(path).convert(mode)) for path in records.inputs[:16]])
    batch, _ = next(iter(splits.validation.loader(0)))
    images = to_device(batch, "cpu")
    assert batch.dtype == torch.uint8 and images.dtype == torch.float32
    assert images.shape == (16, 3 if grayscale_to_rgb else 1, size, size)
    assert torch.allclose(images, expected, atol=1e-5)


def _encoded_images() -> dict[str, bytes]:
    """The PNG and JPEG flavours users' folders and shards hold, written here from noise and
    gradients (so JPEG's chroma subsampling has edges to smear)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    ramp = np.add.outer(np.arange(37), np.arange(53))[..., None] * np.array([3, 5, 7])
    gradient = Image.fromarray((ramp % 256).astype(np.uint8))
    flavours = {
        "png RGB": (noise, "PNG", {}), "png RGBA": (noise.convert("RGBA"), "PNG", {}),
        "png L": (noise.convert("L"), "PNG", {}), "png LA": (noise.convert("LA"), "PNG", {}),
        "png 1-bit": (noise.convert("1"), "PNG", {}), "png palette": (gradient.convert("P"), "PNG", {}),
        "png palette+tRNS": (gradient.convert("P"), "PNG", {"transparency": 0}),
        "png RGB+tRNS": (noise, "PNG", {"transparency": (0, 0, 0)}),
        "png 16-bit": (Image.fromarray(rng.integers(0, 65535, (37, 53)).astype(np.uint16)), "PNG", {}),
        "jpeg 4:2:0": (gradient, "JPEG", {"quality": 80}), "jpeg 4:4:4": (noise, "JPEG", {"subsampling": 0}),
        "jpeg L": (gradient.convert("L"), "JPEG", {}), "jpeg progressive": (gradient, "JPEG", {"progressive": True}),
        "jpeg CMYK": (gradient.convert("CMYK"), "JPEG", {}),
    }
    encoded = {}
    for name, (image, fmt, options) in flavours.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        encoded[name] = buffer.getvalue()
    return encoded


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_decoded_images_have_the_pixels_pil_gives(tmp_path, mode):
    """Graft decodes PNGs and JPEGs with TorchCodec, not PIL: a model trained on PIL-decoded
    images (every pretrained backbone) must see the same pixels, from a file or from a shard."""
    import io

    import numpy as np
    from PIL import Image

    from graft_trainer.data import decode_image

    for name, data in _encoded_images().items():
        pil = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert(mode)))
        expected = pil.permute(2, 0, 1) if pil.dim() == 3 else pil.unsqueeze(0)
        (tmp_path / "image").write_bytes(data)
        for source in (data, tmp_path / "image"):
            decoded = decode_image(source, mode)
            assert decoded.dtype == torch.uint8 and torch.equal(decoded, expected), f"{name} ({mode})"


def test_a_truncated_image_file_is_a_bad_sample_named_by_path(tmp_path):
    folder = tmp_path / "data"
    for index, (name, data) in enumerate(_encoded_images().items()):
        (folder / ("cat" if index % 2 else "dog")).mkdir(parents=True, exist_ok=True)
        (folder / ("cat" if index % 2 else "dog") / f"{index}.{name[:3].replace('jpe', 'jpg')}").write_bytes(data)
    cut = folder / "dog" / "0.png"
    cut.write_bytes(cut.read_bytes()[:200])
    job = job_of(digits_doc(tmp_path, data={"train": str(folder), "validation": str(folder), "maxBadSamples": 1}))
    splits = build_splits(job, 0, 1)
    list(splits.validation.loader(0))
    assert list(splits.validation.bad) == [str(cut)]
    assert "truncated" in splits.validation.bad[str(cut)]


def test_balance_sampler_evens_out_a_skewed_csv_manifest(tmp_path):
    """An imbalanced CSV (90 'common' : 10 'rare', written here) is sampled about evenly."""
    rows = [f"word{i},common" for i in range(90)] + [f"odd{i},rare" for i in range(10)]
    (tmp_path / "skewed.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    doc = text_doc(tmp_path, data={"format": "csv", "train": str(tmp_path / "skewed.csv"),
                                   "validation": str(tmp_path / "skewed.csv"), "balance": "sampler"})
    splits = build_splits(job_of(doc), 0, 1)
    drawn = Counter(splits.train.dataset.records.labels[i] for e in range(5) for i in splits.train.indices(e))
    assert 0.35 < drawn[splits.classes.index("rare")] / sum(drawn.values()) < 0.65


def test_text_batches_are_padded_to_their_own_longest_text(tmp_path):
    splits = build_splits(job_of(text_doc(tmp_path, data={"maxLength": 6})), 0, 1)
    lengths = [inputs["input_ids"].shape[1] for inputs, _ in list(splits.train.loader(0))[:20]]
    assert max(lengths) <= 6 and len(set(lengths)) > 1  # truncated, and dynamic (not fixed) padding


def test_hf_save_to_disk_dataset_with_class_label_names(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"text": ["bad", "good"] * 10, "label": [0, 1] * 10}, features=features).save_to_disk(tmp_path / "ds")
    splits = build_splits(job_of(text_doc(tmp_path, data={"format": "hf-disk", "train": str(tmp_path / "ds")})), 0, 1)
    assert splits.classes == ["neg", "pos"]
    assert len(splits.train.dataset) + len(splits.validation.dataset) == 20


@pytest.mark.parametrize("name", ["quickstart", "digits-source", "digits-transfer"])
def test_examples_are_valid_specs_on_real_data(name):
    job = load_spec(REPO / "examples" / f"{name}.yaml")
    assert job.spec.data.train.startswith("builtin://")  # real data shipped in packages
    assert len(job.spec.strategy.phases) >= 1 and job.spec.resources.procs_per_node == 2


def test_corrupt_images_are_skipped_up_to_the_limit_then_fail_with_the_list(tmp_path):
    import shutil

    from graft_trainer.builtin import resolve
    from graft_trainer.data import BadDataError
    from graft_trainer.loop import fit

    digits = Path(resolve("builtin://sklearn-digits?classes=0-4"))
    for label in ("0", "1"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for png in sorted((digits / label).glob("*.png"))[:8]:
            shutil.copy(png, tmp_path / "folder" / label / png.name)
    corrupt = tmp_path / "folder" / "1" / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    data = {"train": str(tmp_path / "folder"), "validation": str(tmp_path / "folder"), "limit": None, "numWorkers": 2}

    tolerant = build_splits(job_of(digits_doc(tmp_path, data={**data, "maxBadSamples": 1})), 0, 1)
    seen = sum(len(labels) for _, labels in tolerant.train.loader(0))
    assert seen == 16 and list(tolerant.train.bad) == [str(corrupt)]

    del tolerant
    with pytest.raises(BadDataError, match="corrupt.png"):  # the limit is the job's: a real run
        fit(job_of(digits_doc(tmp_path, data={**data, "maxBadSamples": 0})))
    assert multiprocessing.active_children() == []  # the failed run's loader workers ended with it
