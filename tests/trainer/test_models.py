"""The backbone factory: torchvision/timm/transformers backbones, weights from local files, and
the head. Backbones are RANDOMLY INITIALISED here; the files with "pretrained" weights are
written by the tests themselves (what matters is that exactly those values are loaded)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from graft.spec import SpecError
from graft_trainer.models import build_model
from trainer_jobs import digits_doc, job_of, text_doc


def test_torchvision_resnet_loses_its_imagenet_classifier_and_exposes_stages(tmp_path):
    model = build_model(job_of(digits_doc(tmp_path, backbone={"name": "torchvision/resnet18"})), 5)
    assert [b.name for b in model.blocks] == ["layer4", "layer3", "layer2", "layer1", "stem"]
    assert model.head[-1].in_features == 512  # discovered from a dummy forward
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


def test_weights_file_is_loaded_and_its_imagenet_head_ignored(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(num_classes=1000)  # a user's checkpoint, fc included
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")
    doc = digits_doc(tmp_path, backbone={"name": "torchvision/resnet18", "weights": str(tmp_path / "resnet18.pt")})
    model = build_model(job_of(doc), 5)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_weights_for_another_architecture_are_refused(tmp_path):
    save_file({"conv.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    doc = digits_doc(tmp_path, backbone={"weights": str(tmp_path / "other.safetensors")})
    with pytest.raises(SpecError, match="lacks .* of the backbone's tensors"):
        build_model(job_of(doc), 5)


def test_head_has_requested_hidden_layers_and_dropout(tmp_path):
    model = build_model(job_of(digits_doc(tmp_path, head={"hiddenSizes": [64, 32], "dropout": 0.2})), 5)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 64), (64, 32), (32, 5)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.head) == 3


def test_transformer_backbone_blocks_are_encoder_layers_and_pooler_is_dropped(tmp_path):
    model = build_model(job_of(text_doc(tmp_path, backbone={"options": {"numHiddenLayers": 3}})), 2)
    assert [b.name for b in model.blocks] == ["encoder.layer.2", "encoder.layer.1", "encoder.layer.0", "stem"]
    assert model.backbone.pooler is None


def test_bf16_gradients_of_resnets_last_stage_on_small_images_are_real_numbers(tmp_path):
    """On 16 px images ResNet's last stage gets a 1x1 input, smaller than its strided 3x3 kernel:
    oneDNN's bf16 weight gradient for such a convolution was uninitialised memory on
    AVX512-BF16 CPUs (1e11, NaN, a new value each time: the bf16 fine-tune's loss went NaN).
    Graft's bf16 model runs those convolutions in fp32, so every backward pass gives the same
    gradient, within bf16's rounding of fp32's, even with junk left in freed memory."""
    job = job_of(digits_doc(tmp_path, training={"precision": "bf16"}))
    torch.manual_seed(0)
    model = build_model(job, 5)
    for name, parameter in model.backbone.named_parameters():  # "unfreeze: 1", as a user asks
        parameter.requires_grad_(name.startswith("layer4."))
    model.train()  # the frozen stages in eval mode, as in training
    block = model.backbone.layer4[0]
    conv = block.conv1
    assert conv.stride == (2, 2)
    with torch.no_grad():  # timm starts each block's last BatchNorm at 0 (no gradient reaches
        block.bn2.weight.fill_(1.0)  # conv1); after the first optimizer step it is not
    inputs, labels = torch.randn(16, 3, 16, 16), torch.arange(16) % 5

    def last_stage_gradient(autocast: bool) -> torch.Tensor:
        junk = [torch.full((size,), 1e30) for size in (conv.weight.numel(), 100_000, 1_000_000)]
        del junk  # freed memory full of 1e30, which an uninitialised read would pick up
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(inputs)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        return conv.weight.grad.clone()

    reference = last_stage_gradient(autocast=False)
    gradients = [last_stage_gradient(autocast=True) for _ in range(10)]
    assert all(torch.equal(gradient, gradients[0]) for gradient in gradients)
    # The kernel taps that only ever see padding get no gradient, as in fp32; the rest differ
    # from fp32 by bf16's rounding upstream (BatchNorm over 16 single pixels amplifies it).
    assert torch.equal(gradients[0][reference == 0], reference[reference == 0])
    assert (gradients[0] - reference).norm() < 0.5 * reference.norm()
