"""The one training loop, used by local runs, PyTorchJob/TrainJob pods and Ray Train workers.

`fit(job, hooks)` reads top to bottom: set up (Accelerate picks gloo on CPU, NCCL on GPU from
the launcher's environment), check with the other ranks that the checkpoint dir is shared,
resume from the checkpoint rank 0 chose (the newest that verifies) if any, then for each
epoch: enter the strategy's stage (freeze, rebuild optimizer/scheduler, re-wrap DDP because the
set of trainable parameters changed), train, evaluate, record, checkpoint, stop early if asked.
At every step boundary the ranks agree (`coordination.Coordinator.agree`) whether to stop for
a SIGTERM and whether the job's bad samples passed the limit, so they all act together.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from graft.spec import FineTuneJob, SpecError
from graft.spec.contracts import Progress, Summary, progress_line, termination_message
from graft_trainer import checkpoint, dann, feature_cache, strategies
from graft_trainer.coordination import CHECKPOINTING, Coordinator, Preempted
from graft_trainer.data import BadDataError, build_splits, loss_weights, over_limit, to_device
from graft_trainer.evaluate import evaluate
from graft_trainer.export import export
from graft_trainer.models import build_model, param_summary
from graft_trainer.report import Reporter, write_termination_message

log = logging.getLogger("graft.loop")


VALIDATION_KEYS = ("val_loss", "val_accuracy", "val_macro_f1")


@dataclass
class Hooks:
    """Callbacks run on EVERY rank (so a hook may make collective calls, e.g. Ray's report).

    `on_epoch_end(record, checkpoint_dir)` sees each epoch's metrics.jsonl record.
    `on_checkpoint(metrics, checkpoint_dir)` runs after every checkpoint, mid-epoch
    (checkpoint.everySteps), end of epoch and on preemption alike, with the latest metrics known: `step`,
    `epoch`, `phase`, `train_loss`/`train_accuracy` (running over the epoch so far when
    mid-epoch, which adds `batch`), `lr`, and the last validation's `val_*` (absent before the
    first validation).
    `train_data(split)` replaces the training split with one of the same interface (Ray Data's
    share of it for this worker, under spec.ray.ingest: ray-data)."""

    on_epoch_end: Callable[[dict, Path | None], None] | None = None
    on_checkpoint: Callable[[dict, Path], None] | None = None
    resume_from: Path | None = None
    train_data: Callable[[object], object] | None = None


@dataclass
class Position:
    """Where training stands; stored in every checkpoint, so a resume continues exactly."""

    epoch: int = 0  # current global epoch (0-based)
    batch: int = 0  # batches of `epoch` already consumed
    step: int = 0  # optimizer steps so far; names the checkpoint directories
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # epoch loss, correct, count
    best: float | None = None  # best value of training.bestMetric
    best_eval: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)  # the last validation: mid-epoch checkpoints carry it
    phase_best: float | None = None  # early stopping, within the current phase
    stale_epochs: int = 0
    epochs_run: int = 0
    elapsed_s: float = 0.0
    params: dict = field(default_factory=dict)  # parameter summary per phase
    spec_digest: str = ""  # what was being trained: a resume must continue the same job


@dataclass
class Run:
    """What one stage trains with (rebuilt whenever the trainable set changes)."""

    stage: strategies.Stage
    model: nn.Module  # DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: object


def fit(job: FineTuneJob, hooks: Hooks | None = None) -> dict:
    """Train `job` on this rank; raises `Preempted` after the checkpoint a SIGTERM asked for."""
    hooks = hooks or Hooks()
    if job.spec.ray.ingest == "ray-data" and hooks.train_data is None:
        raise SpecError(["spec.ray.ingest: 'ray-data' feeds Ray Train workers; run it with "
                         "`graft run --backend ray` or the rayjob backend, or use 'shards' here"])
    started = time.monotonic()
    owns_process_group = not torch.distributed.is_initialized()
    accelerator = _accelerator(job.spec.training)
    coordinator = Coordinator(job, accelerator)
    coordinator.start("spec.checkpoint.dir")
    try:
        summary = _fit(job, hooks, accelerator, coordinator, started)
    except Preempted:
        raise
    except BaseException as exc:  # the other ranks stop now instead of waiting in a collective
        coordinator.fail(exc, own=isinstance(exc, (SpecError, BadDataError)))
        raise
    finally:
        coordinator.close()
    if owns_process_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return summary


def _fit(job: FineTuneJob, hooks: Hooks, accelerator, coordinator: Coordinator, started: float) -> dict:
    spec, training = job.spec, job.spec.training
    rank = accelerator.process_index

    from accelerate.utils import set_seed

    set_seed(training.seed)  # identical initialisation on every rank
    splits = build_splits(job, rank, accelerator.num_processes)
    if hooks.train_data:
        splits.train = hooks.train_data(splits.train)
    model = build_model(job, len(splits.classes)).to(accelerator.device)
    cache = feature_cache.prepare(job, splits, model, accelerator)  # frozen backbone: features once
    splits = cache.splits if cache else splits
    target = dann.attach(job, model, splits, accelerator)  # data.target: DANN and target accuracy
    weights = loss_weights(splits, job)
    loss_fn = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(accelerator.device), label_smoothing=training.label_smoothing
    )

    checkpoints = Path(spec.checkpoint_dir)
    resume_dir = _resume_point(job, hooks, checkpoints, accelerator)
    saved = checkpoint.read(resume_dir) if resume_dir else None
    position = Position(**saved["position"]) if saved else Position(spec_digest=_digest(job))
    if position.spec_digest != _digest(job):
        raise SpecError([
            f"spec.checkpoint: {resume_dir} was written by a different job (model, data, strategy "
            "or training changed); use a new output/checkpoint dir or checkpoint.resume: never"
        ])
    if saved:
        checkpoint.load_weights(resume_dir, model)
        if target:
            target.load_state_dict(saved["target"])
    if saved and accelerator.is_main_process:
        print(f"resuming from {resume_dir} (epoch {position.epoch + 1}, batch {position.batch})", flush=True)
    if not saved:
        set_seed(training.seed + rank, device_specific=False)  # per-rank dropout/augmentation
    reporter = Reporter(Path(spec.output.dir), accelerator.is_main_process, position.epoch, job.metadata.name)
    saver = Saver(job, checkpoints, accelerator, coordinator, target, hooks.on_checkpoint, position.step if saved else -1)

    total_epochs = spec.strategy.total_epochs
    run: Run | None = None
    while position.epoch < total_epochs:
        stage = strategies.stage_at(job, position.epoch, len(model.blocks))
        if run is None or run.stage != stage:
            run = None  # drop the old DDP wrapper before wrapping again (its hooks must go)
            run = _enter_stage(job, stage, model, accelerator, splits.train.batches_per_epoch)
            summary = param_summary(model)
            position.params.setdefault(f"{stage.phase_index + 1}:{stage.phase.name}", summary)
            if position.batch == 0:
                reporter.param_summary(stage.phase.name, summary)
            if saved:  # the optimizer/scheduler/RNG of the checkpoint belong to this stage
                run.optimizer.load_state_dict(saved["optimizer"])
                run.scheduler.load_state_dict(saved["scheduler"])
                mine = checkpoint.restore_rank(resume_dir, rank, training.seed + rank + position.step)
                if mine:  # this rank's running sums; the position holds rank 0's
                    position.sums = list(mine["sums"])
                saved = None

        train_started = time.monotonic()
        train_loss, train_accuracy, samples, data_wait_s = _train_epoch(
            job, run, splits, position, accelerator, loss_fn, saver, target)
        train_s = time.monotonic() - train_started
        validation = coordinator.ticking(splits.validation.loader(0))
        metrics = evaluate(model, validation, accelerator, len(splits.classes), loss_fn)
        position.epoch, position.batch, position.epochs_run = position.epoch + 1, 0, position.epochs_run + 1
        position.elapsed_s += time.monotonic() - started
        started = time.monotonic()
        record = {
            "epoch": position.epoch, "phase": stage.phase.name, "train_loss": train_loss,
            "train_accuracy": train_accuracy, "val_loss": metrics["val_loss"],
            "val_accuracy": metrics["val_accuracy"], "val_macro_f1": metrics["val_macro_f1"],
            "lr": run.optimizer.param_groups[0]["lr"], "elapsed_s": round(position.elapsed_s, 2),
            "train_s": round(train_s, 3),  # the training steps alone: validation, checkpoint, plot excluded
            "data_wait_s": round(data_wait_s, 3),  # of train_s, rank 0 waiting for its next batch
        }
        if target:
            record.update(target.evaluate(loss_fn, coordinator.ticking))
        position.last_eval = {key: record[key] for key in VALIDATION_KEYS}
        with coordinator.busy(CHECKPOINTING):
            _track_best(job, position, record, metrics, model, splits.classes, accelerator)
        _early_stop(job, position, record, stage)
        reporter.log_epoch(record)
        saved_dir = saver.save(run, position, {**record, "step": position.step})
        if accelerator.is_main_process:  # the operator mirrors it into status; the CLI shows it to people
            progress = Progress(
                **{k: record[k] for k in ("epoch", "phase", "train_loss", "train_accuracy", "val_loss",
                                          "val_accuracy", "val_macro_f1", "elapsed_s")},
                epochs=total_epochs, step=position.step, checkpoint=str(saved_dir),
                best_metric=job.spec.training.best_metric, best_value=position.best,
                best_epoch=position.best_eval.get("epoch"), samples_per_s=round(samples / max(train_s, 1e-9), 1),
                eta_s=round(position.elapsed_s / position.epochs_run * (total_epochs - position.epoch), 1),
            )
            print(progress_line(progress), flush=True)
        if hooks.on_epoch_end:
            hooks.on_epoch_end(record, saved_dir)
        if _boundary(job, coordinator, splits, target) and position.epoch < total_epochs:
            saver.preempt(run, position, {**record, "step": position.step})  # during validation: saved just now

    workload = {"feature_cache": cache.summary()} if cache else {}  # in report.json too
    workload.update(target.summary() if target else {})
    bad = _gathered_bad(_bad_samples(splits, target))
    return _finish(job, position, reporter, splits.classes, accelerator, _rank_facts(model), workload, bad)


def _resume_point(job: FineTuneJob, hooks: Hooks, root: Path, accelerator) -> Path | None:
    """The one checkpoint every rank resumes from: rank 0 chooses, everyone loads that one.

    Ray Train restores its own copy to each worker (`hooks.resume_from`); it is verified too."""
    if hooks.resume_from:
        why = checkpoint.problem(hooks.resume_from)
        if why:
            raise RuntimeError(f"the checkpoint Ray Train restored is unusable: {why}")
        return hooks.resume_from
    if job.spec.checkpoint.resume == "never":
        return None
    chosen = [str(found) if accelerator.is_main_process and (found := checkpoint.choose(root)) else None]
    if torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(chosen, src=0)
    return Path(chosen[0]) if chosen[0] else None


class Saver:
    """Writes checkpoints (mid-epoch, end of epoch, on preemption) and tells the hooks."""

    def __init__(self, job: FineTuneJob, root: Path, accelerator, coordinator: Coordinator, target,
                 on_checkpoint: Callable[[dict, Path], None] | None, last_step: int):
        self.job, self.root, self.accelerator, self.coordinator = job, root, accelerator, coordinator
        self.target, self.on_checkpoint, self.last_step = target, on_checkpoint, last_step
        self.last_dir: Path | None = None

    def save(self, run: Run, position: Position, metrics: dict) -> Path:
        extra = {"target": self.target.state_dict()} if self.target else {}
        self.last_dir = checkpoint.save(
            self.root, position.step, run.model, run.optimizer, run.scheduler, asdict(position),
            self.accelerator, self.job.spec.checkpoint.keep_last, extra, {"sums": list(position.sums)},
            writing=lambda: self.coordinator.busy(CHECKPOINTING),
        )
        self.last_step = position.step
        if self.on_checkpoint:
            self.on_checkpoint(metrics, self.last_dir)
        return self.last_dir

    def preempt(self, run: Run, position: Position, metrics: dict):
        """Checkpoint where every rank stands (unless that step is saved already) and stop."""
        if position.step != self.last_step:
            self.save(run, position, metrics)
        asked, grace = self.coordinator.stop_requested_at, self.job.spec.checkpoint.grace_period_seconds
        if asked is None:
            how = "SIGTERM reached another rank"
        else:
            late = position.step - self.coordinator.stop_requested_step
            how = f"{late} step{'s' * (late != 1)} and {time.monotonic() - asked:.1f} s after SIGTERM reached this rank"
            if time.monotonic() - asked > grace:
                log.warning("the preemption checkpoint took longer than checkpoint.gracePeriodSeconds=%d", grace)
        message = (f"preempted: stopped at step {position.step} (epoch {position.epoch + 1}, batch {position.batch}) "
                   f"with checkpoint {self.last_dir or self.root} ({how}); run the job again to resume from it")
        raise Preempted(message)


def _boundary(job: FineTuneJob, coordinator: Coordinator, splits, target) -> bool:
    """The ranks' agreement at a step boundary: raises on every rank when the job's bad samples
    pass data.maxBadSamples; True when every rank must stop (a SIGTERM reached one of them)."""
    mine = _bad_samples(splits, target)
    stop, total = coordinator.agree(len(mine))
    limit = job.spec.data.max_bad_samples
    if total > limit:
        everyone = _gathered_bad(mine)  # a padded sample read by two ranks counts once
        if len(everyone) > limit:
            raise over_limit(everyone, limit)
    return stop


def _bad_samples(splits, target) -> dict[str, str]:
    """This rank's bad samples so far, over every split it reads."""
    found: dict[str, str] = {}
    for split in (splits.train, splits.validation, *(target.splits() if target else ())):
        found.update(split.bad)
    return found


def _gathered_bad(mine: dict[str, str]) -> dict[str, str]:
    """Every rank's bad samples (collective)."""
    if not torch.distributed.is_initialized():
        return dict(mine)
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return {source: error for part in gathered for source, error in part.items()}


def _digest(job: FineTuneJob) -> str:
    """Hash of what determines the trained weights (not where outputs go, how many ranks, nor
    how fast: a resume may switch training.compile or channelsLast)."""
    fields = {"backbone", "head", "data", "strategy", "training", "task"}
    speed = {"training": {"compile", "channels_last"}}
    text = json.dumps(job.spec.model_dump(mode="json", include=fields, exclude=speed), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _accelerator(training):
    """Accelerate on this launcher's process group; collectives time out at twice the stall
    timeout (the watchdog names a stuck rank first; the timeout ends what it cannot see)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if training.precision == "fp16" and not torch.cuda.is_available():
        raise SpecError(["spec.training.precision: fp16 needs a GPU; use bf16 or fp32 on CPU"])
    if training.compile:
        _check_compiler()
        # added once per process however often fit runs: logging keeps one of each filter
        logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_without_profiler_notice)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[training.precision]
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=2 * training.stall_timeout_seconds))
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), kwargs_handlers=[timeout])


def _without_profiler_notice(record: logging.LogRecord) -> bool:
    """DDP's forward opens a profiler range that dynamo leaves out, and each rank says so in a
    raw log line that asks nothing of anyone."""
    return not str(record.msg).startswith("Profiler record function")


def _check_compiler() -> None:
    """torch.compile builds native code at the first step, C++ kernels on a CPU (Inductor) and a
    C launcher on a GPU (Triton): without a compiler it fails there, deep in a traceback."""
    names = ("cc", "gcc", "clang") if torch.cuda.is_available() else ("c++", "g++", "clang++")
    if os.environ.get("CC" if torch.cuda.is_available() else "CXX") or any(map(shutil.which, names)):
        return
    raise SpecError([f"spec.training.compile: torch.compile needs a compiler on PATH ({', '.join(names)}) and "
                     "this container has none; use Graft's trainer image (it has gcc) or set compile: false"])


def _enter_stage(job: FineTuneJob, stage: strategies.Stage, model, accelerator, batches_per_epoch: int | None) -> Run:
    """Freeze for the stage, build its optimizer and schedule, and (re-)wrap the model.

    DDP records which parameters need gradients when it wraps a model, so a new trainable set
    needs a new wrapper; `free_memory` drops the previous stage's objects from Accelerate."""
    strategies.apply_freezing(model, stage.unfrozen)
    optimizer = strategies.build_optimizer(strategies.param_groups(model, stage), job.spec.training)
    steps_per_epoch = -(-(batches_per_epoch or 1) // job.spec.training.grad_accumulation)
    scheduler = strategies.build_scheduler(
        optimizer, job.spec.training, steps_per_epoch * (stage.last_epoch - stage.first_epoch)
    )
    accelerator.free_memory()
    if accelerator.num_processes == 1:  # torchrun with 1 process: Accelerate would wrap DDP over one
        # rank, copying every gradient through its buckets each step (+15 % per step, bench_loop.py)
        wrapped = accelerator.prepare_model(model, evaluation_mode=True)  # placement, precision, no DDP
        optimizer = accelerator.prepare_optimizer(optimizer)
    else:
        wrapped, optimizer = accelerator.prepare(model, optimizer)
    if job.spec.training.compile:  # in place, so state_dict keys keep their names; DDP's wrapper
        wrapped.compile()  # included, so its buckets still overlap the backward
    return Run(stage, wrapped, optimizer, scheduler)


def _train_epoch(job, run: Run, splits, position: Position, accelerator, loss_fn, saver: Saver, target=None):
    """One epoch from `position.batch` on; returns the mean train loss and accuracy over ranks,
    the samples all ranks trained on in this call (ranks get equal batches) and the seconds this
    rank waited for its batches."""
    training = job.spec.training
    accumulation, total = training.grad_accumulation, splits.train.batches_per_epoch
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    coordinator = saver.coordinator
    run.model.train()
    bar = tqdm(  # a bar only on a terminal: redrawn in a pipe or a pod log, it is one line per batch
        total=total, initial=position.batch, disable=None if accelerator.is_main_process else True, leave=False,
        desc=f"epoch {position.epoch + 1}/{job.spec.strategy.total_epochs} [{run.stage.phase.name}]",
    )
    pending, seen, waited = False, 0, 0.0
    batches = iter(splits.train.loader(position.epoch, position.batch))
    for index in itertools.count(position.batch):
        # the step boundary, before the next batch is read (reading draws augmentation randomness)
        if index % accumulation == 0 and index < total and _boundary(job, coordinator, splits, target):
            bar.close()
            train_loss, train_accuracy = _running_means(position, accelerator)
            saver.preempt(run, position, _mid_epoch_metrics(run, position, train_loss, train_accuracy))
        asked = time.perf_counter()
        inputs, labels = next(batches, (None, None))
        waited += time.perf_counter() - asked  # the model idles while the loader works: data_wait_s
        if inputs is None:
            break
        inputs, labels = to_device(inputs, accelerator.device), labels.to(accelerator.device)
        sync = (index + 1) % accumulation == 0 or index + 1 == total
        with nullcontext() if sync else accelerator.no_sync(run.model):
            with accelerator.autocast():
                logits = run.model(inputs)
            loss = loss_fn(logits.float(), labels)
            adversarial = target.domain_loss(position.step) if target else 0.0  # DANN, dann.py
            accelerator.backward((loss + adversarial) / accumulation)
        pending = not sync
        if sync:
            if training.clip_grad_norm:
                accelerator.clip_grad_norm_(trainable, training.clip_grad_norm)
            run.optimizer.step()
            if target:
                target.step(run.optimizer.param_groups[0]["lr"])
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            position.step += 1
        # one read of the device per step (a GPU sync), not one per number
        loss_value, correct = torch.stack([loss.detach().float(), (logits.argmax(-1) == labels).sum().float()]).tolist()
        position.sums = [position.sums[0] + loss_value * len(labels), position.sums[1] + correct,
                         position.sums[2] + len(labels)]
        position.batch, seen = index + 1, seen + len(labels)
        coordinator.advance(position.step)
        bar.update(1)
        every = job.spec.checkpoint.every_steps
        if sync and every and position.step % every == 0 and index + 1 != total:
            train_loss, train_accuracy = _running_means(position, accelerator)
            saver.save(run, position, _mid_epoch_metrics(run, position, train_loss, train_accuracy))
    bar.close()
    if pending:  # a stream's unknown length ended mid-accumulation: those grads never synced
        run.optimizer.zero_grad(set_to_none=True)
    means = _running_means(position, accelerator)
    position.sums = [0.0, 0.0, 0.0]
    return (*means, seen * accelerator.num_processes, waited)


def _mid_epoch_metrics(run: Run, position: Position, train_loss: float, train_accuracy: float) -> dict:
    """What Hooks.on_checkpoint sees for a checkpoint inside an epoch."""
    return {
        "step": position.step, "epoch": position.epoch + 1, "batch": position.batch,
        "phase": run.stage.phase.name, "train_loss": train_loss, "train_accuracy": train_accuracy,
        "lr": run.optimizer.param_groups[0]["lr"], **position.last_eval,
    }


def _running_means(position: Position, accelerator) -> tuple[float, float]:
    """Mean train loss and accuracy of the epoch so far over all ranks (collective)."""
    sums = accelerator.reduce(torch.tensor(position.sums, dtype=torch.float64, device=accelerator.device), "sum")
    count = max(float(sums[2]), 1.0)
    return float(sums[0]) / count, float(sums[1]) / count


def _track_best(job, position: Position, record: dict, metrics: dict, model, classes, accelerator) -> None:
    """Export the model whenever training.bestMetric improves (so a crash never loses it)."""
    key = job.spec.training.best_metric
    value = record[key]
    improved = position.best is None or (value < position.best if key == "val_loss" else value > position.best)
    if not improved:
        return
    position.best = value
    position.best_eval = {**metrics, "epoch": record["epoch"], "phase": record["phase"]}
    if accelerator.is_main_process:
        export(model, job, classes, record, Path(job.spec.output.dir) / "model")


def _early_stop(job, position: Position, record: dict, stage: strategies.Stage) -> None:
    """Patience counts within a phase: a plateau in 'head only' moves on to the next phase."""
    rule = job.spec.training.early_stopping
    if position.epoch == stage.last_epoch:  # the phase ended: the next one starts afresh
        position.phase_best, position.stale_epochs = None, 0
        return
    if rule is None:
        return
    value = record[rule.metric]
    sign = -1.0 if rule.mode == "min" else 1.0
    if position.phase_best is None or sign * (value - position.phase_best) > rule.min_delta:
        position.phase_best, position.stale_epochs = value, 0
        return
    position.stale_epochs += 1
    if position.stale_epochs >= rule.patience:
        log.warning("early stopping phase '%s' after epoch %d", stage.phase.name, position.epoch)
        position.epoch = stage.last_epoch
        position.phase_best, position.stale_epochs = None, 0


def _rank_facts(model: nn.Module) -> dict[str, list]:
    """Per rank: SHA-256 of its parameters (DDP replicas must end identical, and a user or a
    test can see that they did; buffers are left out, BatchNorm statistics legitimately differ)
    and its peak resident memory, which sizes the pod's memory request."""
    digest = hashlib.sha256()
    for tensor in model.parameters():
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    mine = (digest.hexdigest(), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    gathered: list = [mine]
    if torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, mine)
    fingerprints = [fingerprint for fingerprint, _ in gathered]
    if len(set(fingerprints)) > 1:
        log.error("DDP replicas diverged: parameter fingerprints %s", fingerprints)
    return {"replica_fingerprints": fingerprints, "peak_rss_mib": [rss for _, rss in gathered]}


def _finish(job, position: Position, reporter: Reporter, classes, accelerator, rank_facts: dict[str, list],
            workload: dict, bad: dict[str, str]) -> dict:
    output = Path(job.spec.output.dir)
    history = reporter.history() if accelerator.is_main_process else []
    best = position.best_eval
    summary = {
        "name": job.metadata.name,
        "best_metric": job.spec.training.best_metric,
        "best_value": position.best,
        "best_epoch": best.get("epoch"),
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "best_val_accuracy": best.get("val_accuracy"),
        "epochs_run": position.epochs_run,
        "steps": position.step,
        "elapsed_s": round(position.elapsed_s, 2),
        "output_dir": str(output),
        "model_dir": str(output / "model"),
        "plot": str(output / "plot.png"),
        "metrics": str(output / "metrics.jsonl"),
        "report": str(output / "report.json"),
        "bad_samples": len(bad),  # skipped under data.maxBadSamples, over all ranks
        **rank_facts,
        **workload,
    }
    reporter.final({
        **summary, "classes": classes, "params": position.params,
        "precision": dict(zip(classes, best.get("precision", []))),
        "recall": dict(zip(classes, best.get("recall", []))),
        "confusion": best.get("confusion"), "best_eval_epoch": best.get("epoch"), "history": history,
        "bad_sample_list": [{"source": source, "error": error} for source, error in sorted(bad.items())],
    })
    if accelerator.is_main_process:
        print(
            f"final validation accuracy {summary['val_accuracy']:.4f} (best {summary['best_metric']} "
            f"{summary['best_value']:.4f} at epoch {summary['best_epoch']}) after {summary['epochs_run']} "
            f"epochs, {summary['elapsed_s']:.0f} s, peak memory {max(summary['peak_rss_mib']):.0f} MiB per "
            f"process\nplot: {summary['plot']}\nmodel: {summary['model_dir']}",
            flush=True,
        )
        write_termination_message(termination_message(Summary(**summary)))
    return summary
