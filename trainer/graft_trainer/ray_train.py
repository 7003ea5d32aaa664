"""Run a FineTuneJob under Ray Train: `python -m graft_trainer.ray_train SPEC.yaml`.

Ray only replaces the launcher. Each Ray Train worker runs the one training loop
(`graft_trainer.loop.fit`, Accelerate inside) on the process group and RANK/WORLD_SIZE env that
`TorchTrainer` sets up, so every worker reads its own shard exactly as under torchrun. Ray adds
what it is good at: registering every checkpoint the loop writes (each epoch's, and the
mid-epoch ones of checkpoint.everySteps) in its storage, keeping the best `keepLast` of them
(plus the newest), and restarting the worker group from the newest when a worker dies. With
`spec.ray.ingest: ray-data`, Ray Data reads the training shards instead (as Ray tasks, on any
node's free CPUs) and Ray Train hands each worker an equal share; decoding, transforms and the
bad-sample limit stay the trainer's own (`RayDataSplit`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from graft.spec import FineTuneJob, SpecError, load_spec, parse_spec
from graft.spec.contracts import Result, Summary, result_line

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
    print(result_line(Result(
        metrics=result.metrics,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        best_checkpoints=[c.path for c, _ in result.best_checkpoints or []],
        ray_path=result.path,
        summary=Summary(**result.return_value) if result.return_value else None,
    )), flush=True)
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
        # Only matters when Ray starts a cluster here (no address): that cluster ends with this
        # process, and its dashboard cost ~14 s of start-up and CPU beside the workers
        # (bench_ray), for nobody to look at. Connecting to a cluster ignores it.
        ray.init(address=job.spec.ray.address, include_dashboard=False)
    trainer = TorchTrainer(
        train_loop_per_worker=_train_worker,
        train_loop_config={"job": job.to_document()},
        scaling_config=scaling_config(job),
        run_config=run_config(job),
        datasets=ray_datasets(job),
    )
    return trainer.fit()


def ray_datasets(job: FineTuneJob) -> dict[str, ray.data.Dataset] | None:
    """spec.ray.ingest 'ray-data': the training shards as a Ray Dataset of raw records (Ray
    Train splits it equally among the workers), in a block order fixed by the seed.

    Ray Data's read tasks need CPUs the workers have not reserved: on a node with N CPUs give
    the workers fewer (`resources.cpu`), or the reads wait for CPUs that never come free."""
    if job.spec.ray.ingest != "ray-data":
        return None
    from graft_trainer.streaming import discover

    data = job.spec.data
    source = discover(data.train, data.format, data.label_field)
    urls = [piece.url for piece in source.pieces]
    readers = {
        "tar": lambda: ray.data.read_webdataset(urls, decoder=None),  # raw bytes: the trainer decodes
        "jsonl": lambda: ray.data.read_json(urls, lines=True),
        "csv": lambda: ray.data.read_csv(urls),
        "parquet": lambda: ray.data.read_parquet(urls),
    }
    # the trainer's own bar shows each epoch's progress; Ray Data's would add three more
    # redrawn lines per operator to every log
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = readers[source.kind]().randomize_block_order(seed=job.spec.training.seed)
    return {"train": dataset.limit(data.limit) if data.limit else dataset}


@dataclass
class RayDataSplit:
    """This worker's share of the training Ray Dataset, as the split the loop iterates.

    `stream` is the streamed split the shards path would have read: its decoder, collate,
    class names, batch size, seed and bad-sample limit apply unchanged; only who reads the
    shards differs. The share is equal (Ray drops the remainder), so every worker runs the
    same number of steps. Each epoch reshuffles within a window, seeded by (seed, epoch).
    Ray Data cannot seek: resuming at batch k re-reads the epoch's first k batches and drops
    them, which repeats or skips nothing only when Ray Data delivers the same order again."""

    shard: Any  # ray.data.DataIterator, from ray.train.get_dataset_shard
    stream: Any  # graft_trainer.streaming.Stream
    world_size: int

    @property
    def classes(self) -> list[str]:
        return self.stream.classes

    @property
    def bad(self) -> dict[str, str]:
        return self.stream.bad

    @property
    def batches_per_epoch(self) -> int:
        rows = self.stream.num_samples // self.world_size
        return -(-rows // self.stream.batch_size)

    def loader(self, epoch: int, start_batch: int = 0):
        from graft_trainer.streaming import SHUFFLE_WINDOW, EpochBatches, decode_batch

        batches = self.shard.iter_batches(
            batch_size=self.stream.batch_size, batch_format="numpy",
            local_shuffle_buffer_size=SHUFFLE_WINDOW, local_shuffle_seed=self.stream.seed + epoch,
        )
        decoded = (decode_batch(self.stream.decoder, self.stream.collate, _records(columns))
                   for columns in islice(batches, start_batch, None))
        return EpochBatches(decoded, max(0, self.batches_per_epoch - start_batch), self.stream)


def _records(columns: dict[str, Any]) -> list[tuple[str, str, dict]]:
    """A Ray Data batch (column -> array) as (shard, key, record) rows for the decoder."""
    names = list(columns)
    rows = [dict(zip(names, values)) for values in zip(*(columns[name] for name in names))]
    return [(str(row.get("__url__", "ray-data")), str(row.get("__key__", index)), row)
            for index, row in enumerate(rows)]


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

    train_data = None
    if job.spec.ray.ingest == "ray-data":
        shard, world_size = ray.train.get_dataset_shard("train"), ray.train.get_context().get_world_size()
        train_data = lambda stream: RayDataSplit(shard, stream, world_size)  # noqa: E731

    restored = ray.train.get_checkpoint()
    with restored.as_directory() if restored else nullcontext() as restored_dir:
        hooks = Hooks(on_checkpoint=report, resume_from=Path(restored_dir) if restored_dir else None,
                      train_data=train_data)
        return fit(job, hooks)


if __name__ == "__main__":
    sys.exit(main())
