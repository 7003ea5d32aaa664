"""Ray Train path vs the local torchrun path on the same 2-process job.

    .venv/bin/python bench/bench_ray.py [--epochs 4] [--limit 1200] [--rounds 5]

Measures, for the same spec and seed (timm test_resnet, randomly initialised, on the real
sklearn digits at 32 px):
- Ray start-up: `ray.init(num_cpus=2, include_dashboard=False)` in a fresh interpreter;
- wall time of `python -m graft_trainer.ray_train` vs `torchrun -m graft_trainer`;
- start-up overhead outside the training loop: wall time minus the loop's own elapsed time;
- steady-state step time: the training steps of epochs 2..N (metrics.jsonl `train_s`, median
  per optimizer step; epoch 1 warms up). Goal: Ray within 5 % of local;
- per-epoch work besides the steps (validation, checkpoint, export, plot and, for Ray, the
  report that registers the checkpoint), median over epochs 2..N.
The local run is the baseline. The machine is shared, so the two paths run in interleaved
rounds (which goes first alternates); each round gives a ratio (steps, per-epoch work) or a
difference (start-up), and the figure is the median over rounds with a bootstrap 95 % interval
(bench_loop's method). Each run is long (tens of seconds), so a few rounds suffice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_loop import median_with_interval

PYTHON = Path(sys.executable)
RAY_INIT = (
    "import time; t = time.perf_counter(); import ray; imported = time.perf_counter(); "
    "ray.init(num_cpus=2, include_dashboard=False); started = time.perf_counter(); "
    "print(imported - t, started - imported); ray.shutdown()"
)


def job_document(name: str, output: Path, epochs: int, limit: int) -> dict:
    return {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "task": "image-classification",
            "backbone": {"name": "timm/test_resnet"},
            "data": {"format": "imagefolder", "train": "builtin://sklearn-digits", "imageSize": 32,
                     "limit": limit},
            "strategy": {"phases": [{"epochs": epochs, "lr": 0.003, "unfreeze": "all"}]},
            "training": {"batchSize": 32, "seed": 0},
            "resources": {"procsPerNode": 2},
            "checkpoint": {"keepLast": 2},
            "output": {"dir": str(output)},
        },
    }


def timed_run(command: list[str], output: Path) -> dict:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((output / "report.json").read_text())
    steps_per_epoch = report["steps"] / report["epochs_run"]
    elapsed = [m["elapsed_s"] for m in history]
    epoch_s = [later - earlier for earlier, later in zip(elapsed, elapsed[1:])]
    train_s = [m["train_s"] for m in history[1:]]
    return {
        "wall_s": wall,
        "loop_s": elapsed[-1],
        "outside_loop_s": wall - elapsed[-1],
        "first_epoch_s": elapsed[0],
        "step_s": statistics.median(train_s) / steps_per_epoch,
        "epoch_overhead_s": statistics.median(e - t for e, t in zip(epoch_s, train_s)),
        "val_accuracy": history[-1]["val_accuracy"],
    }


def per_round(runs: dict[str, list[dict]], key: str, difference: bool = False) -> str:
    """Median over rounds of ray/local (or ray - local) for `key`, with its 95 % interval."""
    values = [r[key] - l[key] if difference else r[key] / l[key] for l, r in zip(runs["local"], runs["ray"])]
    median, low, high = median_with_interval(values)
    return f"{median:+.2f} s [{low:+.2f}, {high:+.2f}]" if difference else f"{median:.3f}x [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="at least 2 (epoch 1 is warm-up)")
    parser.add_argument("--limit", type=int, default=1200, help="training samples")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs of each path")
    args = parser.parse_args()

    init = [subprocess.run([str(PYTHON), "-c", RAY_INIT], capture_output=True, text=True, check=True)
            for _ in range(args.rounds)]
    import_s, init_s = (statistics.median(float(r.stdout.split()[i]) for r in init) for i in (0, 1))

    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for round_index in range(args.rounds):
            for path in ("local", "ray") if round_index % 2 == 0 else ("ray", "local"):
                output = Path(tmp) / f"{path}-{round_index}"
                spec = Path(tmp) / f"{path}-{round_index}.yaml"
                spec.write_text(yaml.safe_dump(job_document(f"bench-{path}-{round_index}", output, args.epochs, args.limit)))
                command = (
                    [str(PYTHON.with_name("torchrun")), "--nproc_per_node", "2", "-m", "graft_trainer", str(spec)]
                    if path == "local" else [str(PYTHON), "-m", "graft_trainer.ray_train", str(spec)]
                )
                runs[path].append(timed_run(command, output))
                print(f"round {round_index + 1} {path:5s}: step {runs[path][-1]['step_s'] * 1000:.1f} ms, "
                      f"start-up outside loop {runs[path][-1]['outside_loop_s']:.1f} s", flush=True)

    median = {path: {key: statistics.median(r[key] for r in results) for key in results[0]}
              for path, results in runs.items()}
    local, ray = median["local"], median["ray"]
    print(f"job: timm/test_resnet (random init), sklearn digits 32 px, {args.limit} samples, "
          f"{args.epochs} epochs, 2 processes; {args.rounds} interleaved rounds")
    print(f"ray: import {import_s:.2f} s, ray.init(num_cpus=2, include_dashboard=False) {init_s:.2f} s")
    print(f"{'':34}{'local (torchrun)':>18}{'ray':>12}{'ray/local':>11}  (medians over runs)")
    rows = [("wall time [s]", "wall_s"), ("start-up outside loop [s]", "outside_loop_s"),
            ("first epoch [s]", "first_epoch_s"), ("steady step [ms]", "step_s"),
            ("per-epoch work besides steps [s]", "epoch_overhead_s"),
            ("val accuracy", "val_accuracy")]
    for label, key in rows:
        scale = 1000 if key == "step_s" else 1
        print(f"{label:34}{local[key] * scale:18.3f}{ray[key] * scale:12.3f}{ray[key] / local[key]:11.3f}")
    print(f"per round, median [bootstrap 95 %]: steady step ray/local {per_round(runs, 'step_s')} (goal <= 1.05); "
          f"start-up ray - local {per_round(runs, 'outside_loop_s', difference=True)}; "
          f"per-epoch work ray/local {per_round(runs, 'epoch_overhead_s')}")


if __name__ == "__main__":
    main()
