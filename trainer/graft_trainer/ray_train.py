"""Run a FineTuneJob under Ray Train: `python -m graft_trainer.ray_train SPEC.yaml`.

Ray only replaces the launcher. Each Ray Train worker runs the one training loop
(`graft_trainer.loop.fit`, Accelerate inside) on the process group and RANK/WORLD_SIZE env that
`TorchTrainer` sets up, so every worker reads its own shard exactly as under torchrun. Ray adds
what it is good at: registering every checkpoint the loop writes (each epoch's, and the
mid-epoch ones of checkpoint.everySteps) in its storage, keeping the best `keepLast` of them
(plus the newest), and restarting the worker group from the newest when a worker dies.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from graft.spec import FineTuneJob, SpecError, load_spec, parse_spec

RESULT_PREFIX = "graft-result "
_CPU_QUANTITY = re.compile(r"^([0-9]*\.?[0-9]+)(m?)$")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graft_trainer.ray_train", description=__doc__)
    parser.add_argument("spec", help="FineTuneJob YAML file")
    parser.add_argument(
        "--base-dir", type=Path, default=Path.cwd(),
        help="resolve the spec's relative paths against this directory (default: the current one)",
    )
    args = parser.parse_args(argv)
    try:
        result = run(load_spec(args.spec), base_dir=args.base_dir)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ray.train.TrainingFailedError as exc:
        print(f"graft: Ray Train run failed: {exc}", file=sys.stderr)
        return 1
    summary = {
        "metrics": result.metrics,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "best_checkpoints": [c.path for c, _ in result.best_checkpoints or []],
        "ray_path": result.path,
        "summary": result.return_value,
    }
    print(RESULT_PREFIX + json.dumps(summary, default=str), flush=True)
    return 0


def run(job: FineTuneJob, base_dir: Path | None = None) -> ray.train.Result:
    """Train `job` on the Ray cluster at spec.ray.address (or a local one) and wait for it.

    Relative paths are made absolute first (against `base_dir`, default the current
    directory): Ray workers run in a working directory of their own. On a multi-node cluster
    output.dir / ray.storagePath must be shared storage (a volume every pod mounts, or a URL).
    A rerun (or resume) of the same name continues from the newest checkpoint: the one Ray
    Train recorded in its storage if any, else the loop's own auto-resume from checkpoint.dir.
    """
    job = with_absolute_paths(job, base_dir or Path.cwd())
    if not ray.is_initialized():
        ray.init(address=job.spec.ray.address)
    trainer = TorchTrainer(
        train_loop_per_worker=_train_worker,
        train_loop_config={"job": job.to_document()},
        scaling_config=scaling_config(job),
        run_config=run_config(job),
    )
    return trainer.fit()


def scaling_config(job: FineTuneJob) -> ScalingConfig:
    """One Ray worker per training process; a pod's CPUs and GPUs split among its processes.

    Memory is left to Ray: a pod announces less than its limit (the object store takes a share),
    so asking for the whole of it would leave the worker unschedulable.
    """
    resources = job.spec.resources
    per_worker: dict[str, float] = {"CPU": 1.0}
    if resources.cpu:
        per_worker["CPU"] = cpu_quantity(resources.cpu) / resources.procs_per_node
    if resources.gpus_per_node:
        per_worker["GPU"] = resources.gpus_per_node / resources.procs_per_node
    return ScalingConfig(
        num_workers=resources.world_size,
        use_gpu=resources.gpus_per_node > 0,
        resources_per_worker=per_worker,
    )


def run_config(job: FineTuneJob) -> RunConfig:
    spec = job.spec
    best = spec.training.best_metric
    return RunConfig(
        name=job.metadata.name,
        storage_path=storage_path(job),
        failure_config=FailureConfig(max_failures=spec.ray.max_failures),
        # Ray Train copies print() into its logger as well, so every line would reach the log
        # twice; plain stdout keeps one `graft-progress` line per epoch, as under torchrun.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        checkpoint_config=CheckpointConfig(
            num_to_keep=spec.checkpoint.keep_last,
            checkpoint_score_attribute=best,
            checkpoint_score_order="min" if best == "val_loss" else "max",
        ),
    )


def storage_path(job: FineTuneJob) -> str:
    return job.spec.ray.storage_path or f"{job.spec.output.dir.rstrip('/')}/ray"


def cpu_quantity(text: str) -> float:
    """A Kubernetes CPU quantity ('500m', '4') as a plain number."""
    match = _CPU_QUANTITY.match(text.strip())
    if not match:
        raise SpecError([f"resources.cpu: cannot read {text!r} as a CPU count (e.g. '4' or '500m')"])
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def with_absolute_paths(job: FineTuneJob, base: Path) -> FineTuneJob:
    """The same job with every relative local path resolved against `base` (URLs untouched)."""
    document = job.to_document()
    spec = document["spec"]
    sections = {
        "data": ("train", "validation", "target"),
        "output": ("dir",),
        "checkpoint": ("dir",),
        "ray": ("storagePath",),
        "backbone": ("weights",),
    }
    for section, keys in sections.items():
        for key in keys:
            value = spec.get(section, {}).get(key)
            if value and "://" not in value and not Path(value).is_absolute():
                spec[section][key] = str(base / value)
    return parse_spec(document)


def _unvalidated_score(best_metric: str) -> dict[str, float]:
    """The score a checkpoint written before the first validation reports: the worst value.

    Ray ranks checkpoints by `checkpoint_score_attribute` and needs it in every report (a
    missing key scores -inf, which "min" order turns into the best). NaN and inf would rank
    last but do not survive Ray's JSON snapshot (they come back as null), so a finite bound.
    Later mid-epoch checkpoints carry the last validation (see loop.Hooks)."""
    return {best_metric: sys.float_info.max if best_metric == "val_loss" else 0.0}


def _train_worker(config: dict[str, Any]) -> dict:
    """Runs in every Ray Train worker: the one loop, with Ray's report and restore wired in."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths, never the Hub
    from graft_trainer.loop import Hooks, fit  # torch-heavy: import in the worker only

    job = parse_spec(config["job"])
    is_rank_zero = ray.train.get_context().get_world_rank() == 0

    unvalidated_score = _unvalidated_score(job.spec.training.best_metric)

    def report(metrics: dict, checkpoint_dir: Path) -> None:
        # Every rank must call report (it is a barrier); only rank 0 hands over its checkpoint.
        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if is_rank_zero else None
        ray.train.report(
            {**unvalidated_score, **metrics},
            checkpoint=checkpoint,
            checkpoint_dir_name=checkpoint_dir.name if checkpoint else None,
        )

    restored = ray.train.get_checkpoint()
    with restored.as_directory() if restored else nullcontext() as restored_dir:
        hooks = Hooks(on_checkpoint=report, resume_from=Path(restored_dir) if restored_dir else None)
        return fit(job, hooks)


if __name__ == "__main__":
    sys.exit(main())
