"""Ray Train path vs the local torchrun path on the same 2-process job.

    .venv/bin/python bench/bench_ray.py [--epochs 4] [--limit 1200] [--repeats 1]

Measures, for the same spec and seed (timm test_resnet, randomly initialised, on the real
sklearn digits at 32 px):
- Ray start-up: `ray.init(num_cpus=2, include_dashboard=False)` in a fresh interpreter;
- wall time of `python -m graft_trainer.ray_train` vs `torchrun -m graft_trainer`;
- start-up overhead outside the training loop: wall time minus the loop's own elapsed time;
- steady-state step time: the training steps of epochs 2..N (metrics.jsonl `train_s`, median
  per optimizer step; epoch 1 warms up). Goal: Ray within 5 % of local;
- per-epoch work besides the steps (validation, checkpoint, export, plot and, for Ray, the
  report that registers the checkpoint), median over epochs 2..N.
The local run is the baseline; figures are printed as ratios against it.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="at least 2 (epoch 1 is warm-up)")
    parser.add_argument("--limit", type=int, default=1200, help="training samples")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each path; medians reported")
    args = parser.parse_args()

    init = [subprocess.run([str(PYTHON), "-c", RAY_INIT], capture_output=True, text=True, check=True)
            for _ in range(args.repeats)]
    import_s, init_s = (statistics.median(float(r.stdout.split()[i]) for r in init) for i in (0, 1))

    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for repeat in range(args.repeats):
            for path in ("local", "ray"):
                output = Path(tmp) / f"{path}-{repeat}"
                spec = Path(tmp) / f"{path}-{repeat}.yaml"
                spec.write_text(yaml.safe_dump(job_document(f"bench-{path}-{repeat}", output, args.epochs, args.limit)))
                command = (
                    [str(PYTHON.with_name("torchrun")), "--nproc_per_node", "2", "-m", "graft_trainer", str(spec)]
                    if path == "local" else [str(PYTHON), "-m", "graft_trainer.ray_train", str(spec)]
                )
                runs[path].append(timed_run(command, output))

    median = {path: {key: statistics.median(r[key] for r in results) for key in results[0]}
              for path, results in runs.items()}
    local, ray = median["local"], median["ray"]
    print(f"job: timm/test_resnet (random init), sklearn digits 32 px, {args.limit} samples, "
          f"{args.epochs} epochs, 2 processes; medians of {args.repeats} run(s)")
    print(f"ray: import {import_s:.2f} s, ray.init(num_cpus=2, include_dashboard=False) {init_s:.2f} s")
    print(f"{'':34}{'local (torchrun)':>18}{'ray':>12}{'ray/local':>11}")
    rows = [("wall time [s]", "wall_s"), ("start-up outside loop [s]", "outside_loop_s"),
            ("first epoch [s]", "first_epoch_s"), ("steady step [ms]", "step_s"),
            ("per-epoch work besides steps [s]", "epoch_overhead_s"),
            ("val accuracy", "val_accuracy")]
    for label, key in rows:
        scale = 1000 if key == "step_s" else 1
        print(f"{label:34}{local[key] * scale:18.3f}{ray[key] * scale:12.3f}{ray[key] / local[key]:11.3f}")
    for path, results in runs.items():
        print(f"{path} steady step per run [ms]: " + ", ".join(f"{r['step_s'] * 1000:.1f}" for r in results))
    print(f"Ray start-up overhead vs local: {ray['outside_loop_s'] - local['outside_loop_s']:+.1f} s; "
          f"steady step time ratio {ray['step_s'] / local['step_s']:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
