"""Graft's loop vs a torchvision-reference-style loop on a GPU: images/s and MFU, bf16,
channels_last, eager and `torch.compile` (training.compile).

Workloads: torchvision ResNet-50 and ViT-B/16 at 224 px, full fine-tune, AdamW (fused) 1e-4,
constant LR, no clipping, 1 process, from RANDOM init (no ImageNet weights exist offline;
speed does not depend on the values). Both loops get the same uint8 batches from memory
(`--batches` distinct ones, cycled), so the figure is the step (copy, normalise, forward,
backward, optimizer), not the JPEG decoder: `bench_data_wait.py` measures whether the loader
keeps up. The reference loop is what torchvision's references/classification/train.py does:
model with the new classifier, `.to(memory_format=channels_last)`, `torch.compile(model)` when
asked, autocast bf16, `loss.item()` every step for its logger.

Method: interleaved rounds (reference, graft; the order rotates), each on a fresh model; a
step is timed from one batch's arrival to the next (both loops read the loss every step, so
the GPU has finished it), the first epoch of each run excluded (compilation, cuDNN autotune).
Figures: images/s per loop, graft/reference step-time ratio as the median over rounds with a
bootstrap 95 % interval (`bench_loop.median_with_interval`), and MFU: the model FLOPs of one
training step (torch.utils.flop_counter, forward + backward) per second over the GPU's dense
bf16 peak (`--peak-tflops`, or known for H100/H200/A100/L4).

    .venv/bin/python bench/bench_gpu.py [--model resnet50 vit_b_16] [--compile off on] [--rounds 3]

Nothing here needs a GPU to run (`--device cpu --model resnet18 --image-size 64 --batch 8`
checks the script), but only a GPU's figures mean anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench_loop import StepClock, median_with_interval, torchrun_rank

DENSE_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4,
                     "A100": 312.0, "L4": 121.0}
CLASSES = 10


def job_document(args, model: str, compiled: bool, output: str) -> dict:
    return {
        "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench-gpu"},
        "spec": {
            "task": "image-classification", "backbone": {"name": f"torchvision/{model}"},  # random init
            # the train batches come from `synthetic_batches`; the digits give the classes and
            # a small validation split
            "data": {"format": "imagefolder", "train": "builtin://sklearn-digits", "imageSize": args.image_size,
                     "validationFraction": 0.02},
            "strategy": {"phases": [{"epochs": args.epochs, "lr": 1e-4, "unfreeze": "all"}], "cacheFeatures": "never"},
            "training": {"batchSize": args.batch, "precision": args.precision, "channelsLast": True,
                         "compile": compiled, "scheduler": {"name": "constant"}, "clipGradNorm": None},
            "checkpoint": {"keepLast": 1},
            "output": {"dir": output},
        },
    }


def synthetic_batches(args) -> list:
    """Page-locked on a GPU machine, as Graft's loader pins its batches there."""
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.image_size, args.image_size)
    batches = [(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
                torch.randint(0, CLASSES, (args.batch,), generator=generator)) for _ in range(args.batches)]
    return [(x.pin_memory(), y.pin_memory()) for x, y in batches] if args.device == "cuda" else batches


def epoch_of(batches: list, steps: int):
    return itertools.islice(itertools.cycle(batches), steps)


def run_reference(args, model_name: str, compiled: bool, batches: list, clocks: list[StepClock]) -> None:
    import torch
    import torchvision

    from graft_trainer.data import IMAGENET_MEAN, IMAGENET_STD

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None, num_classes=CLASSES)
    model = model.to(device, memory_format=torch.channels_last)
    if compiled:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    criterion = torch.nn.CrossEntropyLoss()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    mean = torch.tensor([255.0 * m for m in IMAGENET_MEAN], device=device).view(1, -1, 1, 1)
    std = torch.tensor([255.0 * s for s in IMAGENET_STD], device=device).view(1, -1, 1, 1)
    model.train()
    for clock in clocks:
        for images, labels in clock.wrap(epoch_of(batches, args.steps)):
            images = images.to(device, non_blocking=True).float().sub_(mean).div_(std)
            images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "fp32"):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # the reference's MetricLogger reads it every step


def run_graft(args, model_name: str, compiled: bool, batches: list, clocks: list[StepClock]) -> None:
    """`fit` as `graft run --nproc 1` runs it, its train loader replaced by the same batches."""
    from graft.spec import parse_spec
    from graft_trainer.loop import fit

    epochs = iter(clocks)
    with torchrun_rank(lambda *_: next(epochs).wrap(epoch_of(batches, args.steps))):
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as output:
            fit(parse_spec(job_document(args, model_name, compiled, output)))


def step_flops(args, model_name: str) -> float:
    """Model FLOPs of one training step (forward + backward), counted on the eager model."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    model = torchvision.models.get_model(model_name, weights=None, num_classes=CLASSES).to(args.device)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    return float(counter.get_total_flops())


def peak_flops(args) -> float | None:
    import torch

    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device != "cuda" or args.precision != "bf16":
        return None
    name = torch.cuda.get_device_name()
    known = next((tflops for key, tflops in DENSE_BF16_TFLOPS.items() if key in name), None)
    return known * 1e12 if known else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["resnet50", "vit_b_16"])
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up")
    parser.add_argument("--steps", type=int, default=30, help="per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak for --precision")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here; run it on a GPU machine (or --device cpu to check the script)")
    torch.backends.cudnn.benchmark = True  # as the reference does; both loops get it
    print(f"device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, torch {torch.__version__}", flush=True)
    batches, peak, report = synthetic_batches(args), peak_flops(args), {}
    for model_name, mode in itertools.product(args.model, args.compile):
        compiled, flops = mode == "on", step_flops(args, model_name)
        runs: dict[str, list[float]] = {"reference": [], "graft": []}
        for round_index in range(args.rounds):
            kinds = ["reference", "graft"][:: 1 if round_index % 2 == 0 else -1]
            for kind in kinds:
                clocks = [StepClock() for _ in range(args.epochs)]
                (run_reference if kind == "reference" else run_graft)(args, model_name, compiled, batches, clocks)
                step = statistics.median(s for clock in clocks[1:] for s in clock.wall)
                runs[kind].append(step)
                print(f"{model_name} compile {mode} round {round_index + 1} {kind:9s}: {step * 1000:7.2f} ms/step, "
                      f"{args.batch / step:8.1f} images/s", flush=True)
        median, low, high = median_with_interval([g / r for g, r in zip(runs["graft"], runs["reference"])])
        result = {"graft/reference step": {"median": round(median, 4), "ci95": [round(low, 4), round(high, 4)]},
                  "gflops_per_step": round(flops / 1e9, 1)}
        for kind, steps in runs.items():
            step = statistics.median(steps)
            result[f"{kind} images/s"] = round(args.batch / step, 1)
            if peak:
                result[f"{kind} mfu"] = round(flops / step / peak, 4)
        report[f"{model_name} compile {mode}"] = result
        print(f"{model_name} compile {mode}: graft/reference per step median {median:.3f}x "
              f"(95 % CI {low:.3f}-{high:.3f}x) over {args.rounds} rounds; "
              + ", ".join(f"{k} {v}" for k, v in result.items() if "images/s" in k or "mfu" in k), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
    main()
