"""ResNet backbone: shapes, strides, freezing and argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from sqr.modeling.backbone import ResNet
from sqr.modeling.backbone.resnet import FrozenStatsBatchNorm2d

ALL = ("res2", "res3", "res4", "res5")


@pytest.mark.parametrize(
    ("depth", "channels"),
    [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))],
)
def test_output_shapes_and_strides(depth: int, channels: tuple[int, ...]) -> None:
    model = ResNet(depth=depth, out_features=ALL).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 64))
    assert list(outputs) == list(ALL)
    strides = (4, 8, 16, 32)
    for name, c, s in zip(ALL, channels, strides, strict=True):
        assert outputs[name].shape == (2, c, 64 // s, 64 // s), name
        assert model.output_shape[name] == (c, s)


def test_default_returns_res5_only() -> None:
    model = ResNet()
    assert model.output_shape == {"res5": (2048, 32)}
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 96))
    assert list(outputs) == ["res5"]
    assert outputs["res5"].shape == (1, 2048, 2, 3)


def test_only_needed_stages_are_built() -> None:
    model = ResNet(depth=50, out_features=("res3",))
    assert not hasattr(model, "layer3") and not hasattr(model, "layer4")
    assert not any(k.startswith(("layer3.", "layer4.", "fc.")) for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["res3"].shape == (1, 512, 4, 4)


def test_torchvision_names_and_v1_5_stride() -> None:
    model = ResNet(depth=50, out_features=ALL)
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    # Stride on the 3x3 conv (detectron2 STRIDE_IN_1X1=False), as in torchvision v1.5.
    assert model.layer2[0].conv1.stride == (1, 1)
    assert model.layer2[0].conv2.stride == (2, 2)


def test_frozen_bn_is_the_default_norm() -> None:
    model = ResNet(depth=18, out_features=ALL, freeze_at=0)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    assert all(m.eps == 1e-5 for m in norms)
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())


def _trainable(module: nn.Module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at_semantics(freeze_at: int) -> None:
    model = ResNet(depth=18, out_features=ALL, freeze_at=freeze_at)
    assert _trainable(model.conv1) == {freeze_at < 1}
    for i in range(1, 5):
        # res{i+1} (layer{i}) is frozen iff freeze_at >= i + 1.
        assert _trainable(getattr(model, f"layer{i}")) == {freeze_at < i + 1}, f"layer{i}"


def test_freeze_with_bn_converts_frozen_stages_only() -> None:
    model = ResNet(depth=18, out_features=ALL, freeze_at=2, norm="BN")
    assert isinstance(model.bn1, FrozenBatchNorm2d)
    assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)
    assert type(model.layer2[0].bn1) is nn.BatchNorm2d
    assert model.layer2[0].bn1.weight.requires_grad


def test_freeze_with_bn_keeps_statistics() -> None:
    reference = ResNet(depth=18, out_features=("res2",), freeze_at=0, norm="BN")
    with torch.no_grad():
        reference.bn1.running_mean.uniform_(-1, 1)
        reference.bn1.weight.uniform_(0.5, 2)
    frozen = ResNet(depth=18, out_features=("res2",), freeze_at=0, norm="BN")
    frozen.load_state_dict(reference.state_dict())
    frozen._freeze(1)
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)
    assert torch.equal(frozen.bn1.running_mean, reference.bn1.running_mean)
    assert torch.equal(frozen.bn1.weight, reference.bn1.weight.detach())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(frozen.eval()(x)["res2"], reference.eval()(x)["res2"])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"out_features": ("res6",)}, "res6"),
        ({"out_features": ("res5", "stem")}, "stem"),
        ({"out_features": ()}, "empty"),
        ({"out_features": ("res4", "res4")}, "duplicates"),
        ({"depth": 42}, "42"),
        ({"norm": "SyncBN"}, "SyncBN"),
        ({"freeze_at": 6}, "freeze_at"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ResNet(**kwargs)


def test_bare_string_out_features_rejected() -> None:
    with pytest.raises(TypeError, match="res5"):
        ResNet(out_features="res5")


def test_bad_input_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32\)"):
        ResNet(depth=18)(torch.zeros(1, 1, 32, 32))


def test_frozen_stats_bn_trains_affine_but_keeps_statistics() -> None:
    # mmdet's norm_eval=True with requires_grad=True: running statistics never move, even in
    # training mode, while weight and bias get gradients.
    model = ResNet(depth=18, out_features=["res3"], freeze_at=2, norm="FrozenStatsBN").train()
    bn = model.layer2[0].bn1
    assert isinstance(bn, FrozenStatsBatchNorm2d)
    assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)  # frozen stage: fully frozen
    before = bn.running_mean.clone(), bn.running_var.clone()
    out = model(torch.randn(2, 3, 64, 64) * 5 + 3)["res3"]
    out.sum().backward()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    # Training and evaluation normalise identically.
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.train()(x)["res3"], model.eval()(x)["res3"])
    state = model.state_dict()
    assert "layer2.0.bn1.running_mean" in state
    assert not any(k.endswith("num_batches_tracked") for k in state)
    # A checkpoint written with plain BatchNorm (mmdet, torchvision) loads strictly.
    state["layer2.0.bn1.num_batches_tracked"] = torch.tensor(7)
    model.load_state_dict(state)
