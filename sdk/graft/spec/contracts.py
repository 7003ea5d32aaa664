"""Everything one Graft process writes and another reads, defined once: the kinds of objects
on the cluster, the labels and annotations that tie them to a job, and the trainer's
machine-readable lines. The SDK, the operator, the renderers, the deploy generator and the
trainer all import these names, so a change here reaches every side at once.

Pure: no I/O. Each line has one writer and one parser. Every payload carries a version `v`
(readers accept lines without it, from older trainers, and ignore fields they do not know) and
is capped at MESSAGE_LIMIT bytes, Kubernetes' limit for a container's termination message, so
any of them also fits there: a writer drops the least useful fields first and names them in
`dropped`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from graft.spec.models import API_VERSION, KIND


class ResourceKind(NamedTuple):
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


FINETUNEJOB = ResourceKind(*API_VERSION.split("/"), "finetunejobs", KIND)
# spec.backend -> the child job the renderer makes for it (and the operator's CRDs to watch).
CHILD_KINDS: dict[str, ResourceKind] = {
    "pytorchjob": ResourceKind("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
    "trainjob": ResourceKind("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
    "rayjob": ResourceKind("ray.io", "v1", "rayjobs", "RayJob"),
}
# Where each child kind keeps its suspend switch (written by the renderer, patched by SDK/operator).
SUSPEND_PATHS: dict[str, tuple[str, ...]] = {
    "pytorchjob": ("spec", "runPolicy", "suspend"),
    "trainjob": ("spec", "suspend"),
    "rayjob": ("spec", "suspend"),
}


def backend_of(kind: str) -> str:
    """The spec.backend whose child is `kind` (e.g. 'PyTorchJob' -> 'pytorchjob')."""
    return next(backend for backend, child in CHILD_KINDS.items() if child.kind == kind)


# Labels and annotations.
JOB_LABEL = "graft.dev/job"  # on every object and pod of a job; Ray job metadata too
ROLE_LABEL = "graft.dev/role"
RAY_DRIVER_ROLE = "ray-driver"  # ROLE_LABEL value of the pod whose log carries a RayJob's progress
SPEC_ANNOTATION = "graft.dev/spec"  # Ray job metadata: the submitted spec, so resume can resubmit it
OPERATOR_ANNOTATION_PREFIX = "operator.graft.dev"  # kopf's bookkeeping on FineTuneJobs
PEERING_NAME = "graft-operator"  # the kopf peering object the deploy files create

# The spec every pod reads: ConfigMap `<name>-spec`, key SPEC_KEY.
SPEC_KEY = "spec.yaml"


def spec_configmap_name(job_name: str) -> str:
    return f"{job_name}-spec"


# The trainer's machine-readable output.
PROGRESS_MARK = "graft-progress "
RESULT_MARK = "graft-result "
TERMINATION_LOG = "/dev/termination-log"
MESSAGE_LIMIT = 4096
VERSION = 1

# How a trainer process ends (the README's operations section documents them). A preempted
# rank exits 128 + SIGTERM, which Kubeflow's ExitCode restart policy retries like OnFailure.
PREEMPTED_EXIT_CODE = 143  # stopped on SIGTERM after writing a checkpoint: run it again
STALLED_EXIT_CODE = 124  # no rank made progress for training.stallTimeoutSeconds
PEER_FAILED_EXIT_CODE = 125  # another rank failed first; its error is the job's error
# Seconds a pod gets beyond checkpoint.gracePeriodSeconds (torchrun passing the signal on, the
# step in flight, exiting): terminationGracePeriodSeconds = grace + margin.
GRACE_MARGIN_SECONDS = 10
TERMINATION_LOG_ENV = "GRAFT_TERMINATION_LOG"  # where a local run writes its termination message

# Sharded data: `graft data pack` writes these beside its WebDataset shards, the streaming
# trainer reads them.
DATA_INDEX_FILE = "index.json"  # {classes, total, shards: [{name, count, bytes, members?}], ...}
# Per shard, where each sample's members lie in the tar, so a reader seeks and reads them without
# parsing tar headers: {"v": 1, "samples": [[key, [[extension, data offset, size], ...]], ...]},
# samples in tar order, each sample's members contiguous (one 512-byte tar header before each).
# The shard's entry in DATA_INDEX_FILE names it under "members"; shards without one are read as
# plain tars.
SHARD_MEMBERS_SUFFIX = ".members.json"
SHARD_MEMBERS_VERSION = 1

# Files inside the checkpoint directory, which every node must share.
COORDINATION_DIR = ".graft"  # per-attempt files the ranks agree and watch each other through
SHARED_CHECK_FILE = "shared-check"  # rank 0 writes the attempt's nonce; every rank must read it back
HEARTBEAT_FILE = "heartbeat-{rank}.json"  # {attempt, rank, host, pid, step, progress, state, beat}
FAILURE_FILE = "failed.json"  # {attempt, rank, host, error}: the failure every other rank stops on
MANIFEST_FILE = "manifest.json"  # in each step-<n>/: {step, world_size, files: {name: sha256}}

# A local job, `$GRAFT_HOME/jobs/<name>/`: the SDK's local backend creates it and reads it, the
# trainer's launcher (`python -m graft_trainer.launcher DIR`, a detached supervisor) runs the
# ranks with torchrun and records how they do.
LOCAL_SPEC = "spec.yaml"
LOCAL_STATE = "state.json"  # LocalState, replaced atomically
LOCAL_LOG = "logs.txt"  # every rank's output, each line `[rank N] ...`
LOCAL_EVENTS = "events.txt"  # event_line()s
LOCAL_RANK_LOGS = "ranks"  # each rank's own stdout/stderr (torchrun's --log-dir)


class LocalState(BaseModel):
    """state.json. The backend writes it once at submit; from then on the launcher is its only
    writer."""

    v: int = VERSION
    name: str
    phase: str
    message: str = ""
    nproc: int
    cwd: str
    master_port: int
    grace_s: int  # spec.checkpoint.gracePeriodSeconds: how long a stopped rank has to checkpoint
    created: datetime
    start_time: datetime | None = None
    completion_time: datetime | None = None
    supervisor_pid: int | None = None


def event_line(text: str, when: datetime) -> str:
    return f"{when.isoformat()} {text}\n"


# RBAC the operator needs, as data: the deploy generator writes these into the chart and
# kustomize; each rule names the operator code that uses it.
_CHILD_VERBS = ["get", "list", "watch", "create", "patch"]  # create, read back on 409, mirror, suspend
OPERATOR_RBAC_RULES: list[dict[str, list[str]]] = [
    # kopf: watch FineTuneJobs, store its progress/diff-base annotations (handlers.py).
    {"apiGroups": [FINETUNEJOB.group], "resources": [FINETUNEJOB.plural], "verbs": ["list", "watch", "patch"]},
    # status mirroring (kube.Kube.patch_status).
    {"apiGroups": [FINETUNEJOB.group], "resources": [f"{FINETUNEJOB.plural}/status"], "verbs": ["patch"]},
    # children (kube.Kube).
    *({"apiGroups": [child.group], "resources": [child.plural], "verbs": list(_CHILD_VERBS)}
      for child in CHILD_KINDS.values()),
    # the spec ConfigMap: create, read back on 409.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]},
    # pods: watch + list for restarts/why/final summary; get for whether a followed log's pod
    # still runs; logs for graft-progress lines; patch for the progress daemon kopf runs per
    # rank-0 pod (it keeps its state in the pod's annotations).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # Events: ours (kube.Kube.event) and kopf's handler-failure warnings.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    # kopf: discover namespaces and CRDs appearing at runtime.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    # kopf peering: one active instance (needs kopf's peering CRDs installed).
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"],
     "verbs": ["list", "watch", "patch", "get"]},
]


class _Payload(BaseModel):
    """Common to every line: the version, and the fields a writer had to drop to fit."""

    model_config = ConfigDict(extra="allow")
    # Fields dropped, in this order, when the payload would exceed MESSAGE_LIMIT.
    droppable: ClassVar[tuple[str, ...]] = ()

    v: int = VERSION
    dropped: list[str] | None = None

    def encode(self) -> str:
        """Compact JSON of at most MESSAGE_LIMIT bytes."""
        data = self.model_dump(exclude_none=True)
        extras = [key for key in data if key not in type(self).model_fields]
        for key in [*self.droppable, *extras, None]:
            text = json.dumps(data, separators=(",", ":"), default=str)
            if len(text.encode()) <= MESSAGE_LIMIT:
                return text
            if key is None:
                raise ValueError(f"{type(self).__name__} cannot fit in {MESSAGE_LIMIT} bytes")
            *parents, leaf = key.split(".")  # a dotted key drops a field of a nested payload
            holder = data
            for parent in parents:
                holder = holder.get(parent) or {}
            if holder.pop(leaf, None) is not None:
                data["dropped"] = [*data.get("dropped", []), key]
        raise AssertionError("unreachable")

    def as_dict(self) -> dict[str, Any]:
        """The fields the writer sent, as plain data (no version): what status and metrics show."""
        return self.model_dump(mode="json", exclude_unset=True, exclude={"v"})


class Progress(_Payload):
    """One per epoch, from rank 0: what the operator mirrors into FineTuneJob.status and what
    `graft run` / `graft logs` turn into a line for people. Keys are metrics.jsonl's."""

    droppable = ("checkpoint", "phase")

    epoch: int
    epochs: int
    phase: str | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    step: int | None = None
    checkpoint: str | None = None
    best_metric: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    elapsed_s: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None  # time left at the pace so far


class Summary(_Payload):
    """The trainer's final summary: the container's termination message (pod status) and the
    return value a Ray Train run reports."""

    droppable = ("replica_fingerprints", "peak_rss_mib", "report", "metrics", "plot", "model_dir",
                  "output_dir", "best_val_accuracy")

    name: str | None = None
    best_metric: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    epochs_run: int | None = None
    steps: int | None = None
    elapsed_s: float | None = None
    output_dir: str | None = None
    model_dir: str | None = None
    plot: str | None = None
    metrics: str | None = None
    report: str | None = None
    replica_fingerprints: list[str] | None = None
    peak_rss_mib: list[float] | None = None


class Result(_Payload):
    """`graft-result`: how a Ray Train run ended, printed once by its driver."""

    droppable = ("best_checkpoints", "metrics", "ray_path", *(f"summary.{key}" for key in Summary.droppable))

    summary: Summary | None = None
    checkpoint: str | None = None
    best_checkpoints: list[str] | None = None
    ray_path: str | None = None
    metrics: dict[str, Any] | None = None


_P = TypeVar("_P", bound=_Payload)


def progress_line(progress: Progress) -> str:
    return PROGRESS_MARK + progress.encode()


def result_line(result: Result) -> str:
    return RESULT_MARK + result.encode()


def termination_message(summary: Summary) -> str:
    return summary.encode()


def read_progress(line: str) -> Progress | None:
    """The progress in a log line, None for any other line. The mark may follow a prefix:
    `[rank 0] `, `[<pod>] ` or Ray's `(RayTrainWorker pid=..) `."""
    return _read_marked(line, PROGRESS_MARK, Progress)


def latest_progress(lines: Iterable[str]) -> Progress | None:
    """The newest progress among `lines`, None when there is none yet."""
    latest = None
    for line in lines:
        latest = read_progress(line) or latest
    return latest


def read_result(line: str) -> Result | None:
    return _read_marked(line, RESULT_MARK, Result)


def read_termination_message(text: str | None) -> Summary | None:
    return _decode(text, Summary)


def _read_marked(line: str, mark: str, model: type[_P]) -> _P | None:
    start = line.find(mark + "{")
    return None if start < 0 else _decode(line[start + len(mark):], model)


def _decode(text: str | None, model: type[_P]) -> _P | None:
    if not text:
        return None
    try:
        return model.model_validate_json(text)
    except ValidationError:
        return None
