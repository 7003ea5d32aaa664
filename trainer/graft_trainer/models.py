"""Backbone factory + new head: the network a FineTuneJob trains.

A `GraftModel` is `head(pool(backbone(x)))`. The backbone's own classifier is removed, its
feature width discovered, and its parameters split into `blocks`, listed top-down, which are
the units that strategies freeze and unfreeze ("unfreeze the last 2 blocks"):

- timm: the library's own coarse grouping (`group_matcher`): stages of a CNN, blocks of a ViT;
- transformers: the encoder's layers (the model's largest `ModuleList`);
- torchvision: `layer1..4` (ResNets), the children of `features` (VGG, MobileNet, EfficientNet,
  ConvNeXt, DenseNet) or `encoder.layers` (ViT).
Parameters outside those groups (stem, embeddings) form the bottom block.

Frozen sub-trees run in eval mode even while the model trains: a frozen BatchNorm must not
keep updating its running statistics from the new data (the classic transfer-learning bug),
and frozen features stay deterministic (dropout off), as in Keras' `training=False`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from pydantic.alias_generators import to_snake
from torch import nn

from graft.spec import FineTuneJob, SpecError
from graft_trainer.builtin import resolve

log = logging.getLogger("graft.models")


@dataclass
class Block:
    """A unit of unfreezing: named parameters of one stage/layer of the backbone."""

    name: str
    params: list[nn.Parameter]

    @property
    def trainable(self) -> bool:
        return all(p.requires_grad for p in self.params)


class GraftModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, blocks: list[Block], family: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.family = family
        self.blocks = blocks  # top-down; a plain list, so not registered twice
        self.precomputed_features = False  # inputs are pooled features (graft_trainer.feature_cache)
        self.channels_last = False  # images enter NHWC, as the weights are stored (training.channelsLast)

    def features(self, inputs) -> torch.Tensor:
        if self.precomputed_features:
            return inputs
        if isinstance(inputs, dict):  # transformer encoder: mean over real (unpadded) tokens
            hidden = self.backbone(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.backbone(inputs)

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.features(inputs))

    def train(self, mode: bool = True) -> GraftModel:
        super().train(mode)
        if mode:
            _eval_frozen(self.backbone)
        return self


def _eval_frozen(module: nn.Module) -> bool | None:
    """Put every fully frozen sub-tree in eval mode. Returns None when `module` holds no
    parameters, else whether all of them are frozen."""
    states = [_eval_frozen(child) for child in module.children()]
    states += [not p.requires_grad for p in module.parameters(recurse=False)]
    states = [s for s in states if s is not None]
    if not states:
        return None
    frozen = all(states)
    if frozen:
        module.eval()
    return frozen


def build_head(feature_dim: int, hidden_sizes: list[int], dropout: float, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = feature_dim
    for size in hidden_sizes:
        layers += [nn.Dropout(dropout), nn.Linear(width, size), nn.ReLU()] if dropout else [nn.Linear(width, size), nn.ReLU()]
        width = size
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_model(job: FineTuneJob, num_classes: int) -> GraftModel:
    spec = job.spec
    family = spec.backbone.family
    options = {to_snake(k): v for k, v in spec.backbone.options.items()}
    try:
        if family == "hf":
            backbone = _hf_backbone(spec.backbone.arch, spec.backbone.weights, options)
            feature_dim = backbone.config.hidden_size
        else:
            backbone = _timm_backbone(spec.backbone.arch, options) if family == "timm" else _torchvision_backbone(spec.backbone.arch, options)
            if spec.backbone.weights:
                load_weights(backbone, resolve(spec.backbone.weights))
            channels = 3 if spec.data.grayscale_to_rgb else 1
            feature_dim = _discover_feature_dim(backbone, channels, spec.data.image_size)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError([f"spec.backbone: cannot build '{spec.backbone.name}': {exc}"]) from None
    if spec.training.precision == "bf16":
        _strided_convs_smaller_input_in_fp32(backbone)
    head = build_head(feature_dim, spec.head.hidden_sizes, spec.head.dropout, num_classes)
    model = GraftModel(backbone, head, _blocks(backbone, family), family)
    if spec.training.channels_last and family != "hf":
        model.channels_last = True
        model.to(memory_format=torch.channels_last)  # every 4-D weight: the convolutions'
    return model


def _strided_convs_smaller_input_in_fp32(backbone: nn.Module) -> None:
    """Work around a oneDNN bug in torch's CPU bf16 path (seen with torch 2.14.1 on AVX512-BF16
    CPUs): the weight gradient of a strided convolution whose input is smaller than its kernel
    (ResNet's last stage on 16 px images) comes back as uninitialised memory, 1e11 or NaN, a
    different value each run. Those convolutions see a few pixels, so running them in fp32
    costs nothing measurable; every other op keeps bf16."""
    for conv in backbone.modules():
        if isinstance(conv, nn.Conv2d) and max(conv.stride) > 1:
            conv.forward = partial(_fp32_if_smaller_than_kernel, conv.kernel_size, conv.forward)


def _fp32_if_smaller_than_kernel(kernel: tuple[int, int], forward, inputs: torch.Tensor) -> torch.Tensor:
    height, width = inputs.shape[-2:]
    if inputs.device.type == "cpu" and torch.is_autocast_enabled("cpu") and (height < kernel[0] or width < kernel[1]):
        with torch.autocast("cpu", enabled=False):
            return forward(inputs.float())
    return forward(inputs)


# ------------------------------------------------------------------------------ factories


def _timm_backbone(arch: str, options: dict) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=0, **options)


def _torchvision_backbone(arch: str, options: dict) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, **options)
    # The ImageNet classifier is the last Linear in module order for every torchvision family.
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model


def _hf_backbone(arch: str, weights: str | None, options: dict) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    source = resolve(arch)
    if weights and Path(resolve(weights)).is_dir():
        model = AutoModel.from_pretrained(resolve(weights), **options)
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(source, **options))
        if weights:
            load_weights(model, resolve(weights))
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # Graft pools itself; an unused pooler would stall DDP
    return model


def load_weights(module: nn.Module, path: str) -> None:
    """Load a state dict (safetensors or .pt) into `module`; a Graft export's head is dropped.

    Keys the module lacks (an ImageNet classifier) are ignored; keys the file lacks are an
    error, because a silently half-initialised "pretrained" backbone is worse than none."""
    if not Path(path).is_file():
        raise SpecError([f"spec.backbone.weights: '{path}' is not a file or model directory"])
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise SpecError([
            f"spec.backbone.weights: {path} lacks {len(result.missing_keys)} of the backbone's "
            f"tensors (e.g. {result.missing_keys[:3]}); is it for this architecture?"
        ])
    if result.unexpected_keys:
        log.info("ignored %d tensors not in the backbone: %s", len(result.unexpected_keys), result.unexpected_keys[:5])


def _discover_feature_dim(backbone: nn.Module, channels: int, size: int) -> int:
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, channels, size, size))
    backbone.train(was_training)
    if out.dim() != 2:
        raise SpecError([f"spec.backbone: expected pooled (N, C) features, got shape {tuple(out.shape)}"])
    return out.shape[1]


# -------------------------------------------------------------------------------- blocks


def _blocks(backbone: nn.Module, family: str) -> list[Block]:
    """Top-down unfreezing units; everything ungrouped joins the bottom block ('stem')."""
    params = dict(backbone.named_parameters())
    if family == "timm":
        from timm.models import group_parameters

        groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
        bottom_up = [(f"group{gid}", names) for gid, names in groups.items()]
    else:
        prefixes = _hf_prefixes(backbone) if family == "hf" else _torchvision_prefixes(backbone)
        bottom_up = [(p.rstrip("."), [n for n in params if n.startswith(p)]) for p in prefixes]
    grouped = {n for _, names in bottom_up for n in names}
    stem = [n for n in params if n not in grouped]
    if stem:
        bottom_up.insert(0, ("stem", stem))
    blocks = [Block(name, [params[n] for n in names]) for name, names in bottom_up if names]
    return blocks[::-1]


def _hf_prefixes(backbone: nn.Module) -> list[str]:
    name, layers = max(
        ((n, m) for n, m in backbone.named_modules() if isinstance(m, nn.ModuleList)),
        key=lambda item: len(item[1]),
    )
    return [f"{name}.{i}." for i in range(len(layers))]


def _torchvision_prefixes(backbone: nn.Module) -> list[str]:
    children = dict(backbone.named_children())
    if "layer4" in children:
        return [f"layer{i}." for i in range(1, 5)]
    if isinstance(children.get("features"), nn.Sequential):
        return [f"features.{n}." for n, _ in children["features"].named_children()]
    if "encoder" in children and hasattr(children["encoder"], "layers"):
        return [f"encoder.layers.{n}." for n, _ in children["encoder"].layers.named_children()]
    return [f"{n}." for n, _ in children.items()]


def param_summary(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
