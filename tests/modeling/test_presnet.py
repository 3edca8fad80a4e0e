"""PResNet-vd: shapes and strides per depth, the vd stem and shortcut, freezing, official names."""

from __future__ import annotations

import pytest
import torch
from helpers.rtdetrv2_keys import official_presnet_shapes
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from sqr.modeling.backbone import PResNet
from sqr.modeling.backbone.presnet import BasicBlock, Bottleneck, ProjectionShortcut
from sqr.modeling.converters.detectron2 import ConversionError
from sqr.modeling.converters.rtdetr import convert_rtdetr_presnet

# depth -> (block, blocks per stage, expansion): the ResNet table RT-DETR uses.
ARCH = {
    18: (BasicBlock, (2, 2, 2, 2), 1),
    34: (BasicBlock, (3, 4, 6, 3), 1),
    50: (Bottleneck, (3, 4, 6, 3), 4),
    101: (Bottleneck, (3, 4, 23, 3), 4),
}
WIDTH = 4  # tiny: stage i has 4 * 2**i channels (times the expansion at its output)


@pytest.mark.parametrize("depth", sorted(ARCH))
def test_output_shapes_strides_and_blocks(depth: int) -> None:
    block, counts, expansion = ARCH[depth]
    model = PResNet(depth, return_idx=(0, 1, 2, 3), freeze_norm=False, width=WIDTH).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 96))
    assert list(outputs) == ["res2", "res3", "res4", "res5"]
    for i, (name, out) in enumerate(outputs.items()):
        channels, stride = WIDTH * 2**i * expansion, 4 * 2**i
        assert out.shape == (2, channels, 64 // stride, 96 // stride), name
        assert model.output_shape[name] == (channels, stride)
        layer = getattr(model, f"layer{i + 1}")
        assert len(layer) == counts[i] and all(type(b) is block for b in layer)


def test_return_idx_selects_stages_and_sizes_round_up() -> None:
    model = PResNet(18, return_idx=(1, 2, 3), width=WIDTH).eval()
    assert model.output_shape == {"res3": (8, 8), "res4": (16, 16), "res5": (32, 32)}
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 65, 33))
    # Every stride-2 step rounds up: 65 -> 33 -> 17 -> 9 -> 5 -> 3, 33 -> 17 -> 9 -> 5 -> 3 -> 2.
    assert {k: tuple(v.shape[2:]) for k, v in outputs.items()} == {
        "res3": (9, 5),
        "res4": (5, 3),
        "res5": (3, 2),
    }


def test_vd_stem_is_three_3x3_convs() -> None:
    model = PResNet(50, width=WIDTH)
    convs = [model.stem.conv1.conv, model.stem.conv2.conv, model.stem.conv3.conv]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 2), (2, 2), (2, 4)]
    assert all(c.bias is None for c in model.modules() if isinstance(c, nn.Conv2d))


def test_stride_on_the_3x3_conv_of_bottlenecks() -> None:
    block = PResNet(50, width=WIDTH).layer2[0]
    assert block.conv1.conv.stride == (1, 1) and block.conv2.conv.stride == (2, 2)


def test_vd_shortcut_avg_pools_before_the_1x1_conv() -> None:
    # Identity norm and a 1x1 weight of 2: the shortcut is 2 * avgpool2x2(x) with ceil_mode, whose
    # last row/column windows hang over a 3x3 input and average only the pixels inside it.
    shortcut = ProjectionShortcut(1, 1, stride=2, norm_layer=lambda c: nn.Identity())
    nn.init.constant_(shortcut.conv.weight, 2.0)
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    expected = 2 * torch.tensor([[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8 / 1]])
    assert torch.equal(shortcut(x), expected[None, None])


@pytest.mark.parametrize("depth", [18, 50])
def test_shortcut_layout_per_stage(depth: int) -> None:
    model = PResNet(depth, width=WIDTH)
    for i in range(1, 5):
        first, *rest = getattr(model, f"layer{i}")
        assert isinstance(first.shortcut, ProjectionShortcut)  # even in res2 of ResNet-18/34
        pool = first.shortcut.pool
        if i == 1:
            assert isinstance(pool, nn.Identity)
        else:
            assert isinstance(pool, nn.AvgPool2d)
            assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (2, 2, 0, True)
            assert first.shortcut.conv.stride == (1, 1)
        assert all(isinstance(b.shortcut, nn.Identity) for b in rest)


def _norms(model: nn.Module) -> list[nn.Module]:
    # Every conv is followed by a module named "norm": 3 in the stem, 2 per BasicBlock of
    # ResNet-18 (8 blocks) and one per projection shortcut (4).
    return [m for name, m in model.named_modules() if name.endswith(".norm")]


def test_freeze_norm_uses_frozen_batch_norm() -> None:
    model = PResNet(18, freeze_norm=True, width=WIDTH)
    norms = _norms(model)
    assert len(norms) == 3 + 2 * 8 + 4
    assert all(type(m) is FrozenBatchNorm2d and m.eps == 1e-5 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())
    norms = _norms(PResNet(18, freeze_norm=False, width=WIDTH))
    assert len(norms) == 3 + 2 * 8 + 4 and all(type(m) is nn.BatchNorm2d for m in norms)


@pytest.mark.parametrize("freeze_at", [-1, 0, 2, 4])
def test_frozen_parameters_get_no_gradient(freeze_at: int) -> None:
    model = PResNet(18, freeze_at=freeze_at, freeze_norm=False, width=WIDTH).train()
    # An input that needs a gradient keeps backward possible when everything is frozen.
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    sum(y.square().sum() for y in model(x).values()).backward()
    # Official semantics: -1 nothing, k >= 0 the stem and the first k stages.
    frozen = {"stem"} if freeze_at >= 0 else set()
    frozen |= {f"layer{i}" for i in range(1, freeze_at + 1)}
    for name, param in model.named_parameters():
        is_frozen = name.split(".")[0] in frozen
        assert param.requires_grad is not is_frozen, name
        assert (param.grad is None) is is_frozen, name
        if not is_frozen:
            assert param.grad.abs().sum() > 0, name


def test_every_parameter_gets_a_gradient_with_frozen_norms() -> None:
    model = PResNet(50, return_idx=(1, 2, 3), freeze_norm=True, width=WIDTH).train()
    sum(y.square().sum() for y in model(torch.randn(2, 3, 32, 32)).values()).backward()
    params = list(model.named_parameters())
    assert len(params) == sum(isinstance(m, nn.Conv2d) for m in model.modules())  # convs only
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in params)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 152}, "depth=152"),
        ({"return_idx": (3, 1)}, "strictly increasing"),
        ({"return_idx": (4,)}, "0..3"),
        ({"freeze_at": 5}, "freeze_at=5"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PResNet(**kwargs)


@pytest.mark.parametrize(("depth", "freeze_norm"), [(18, False), (34, False), (50, True)])
def test_official_names_convert_and_load(depth: int, freeze_norm: bool) -> None:
    shapes = official_presnet_shapes(depth, batch_norm=not freeze_norm)
    official = {k: torch.rand(s) if s else torch.tensor(7) for k, s in shapes.items()}
    converted = convert_rtdetr_presnet(official, prefix="")
    assert len(converted) == len(official)
    model = PResNet(depth, return_idx=(1, 2, 3), freeze_norm=freeze_norm)
    model.load_state_dict(converted, strict=True)
    loaded = model.state_dict()
    assert torch.equal(
        loaded["stem.conv3.norm.running_var"], official["conv1.conv1_3.norm.running_var"]
    )
    assert torch.equal(
        loaded["layer2.0.shortcut.conv.weight"],
        official["res_layers.1.blocks.0.short.conv.conv.weight"],
    )
    assert torch.equal(
        loaded["layer1.0.shortcut.norm.bias"], official["res_layers.0.blocks.0.short.norm.bias"]
    )
    assert torch.equal(
        loaded["layer3.1.conv2.conv.weight"], official["res_layers.2.blocks.1.branch2b.conv.weight"]
    )
    assert all(torch.equal(loaded[k], v) for k, v in converted.items())


def test_bare_backbone_prefix_and_unknown_keys() -> None:
    official = {k: torch.zeros(s) for k, s in official_presnet_shapes(18, False).items()}
    converted = convert_rtdetr_presnet(official)
    assert "backbone.layer4.1.conv2.norm.running_mean" in converted
    assert all(k.startswith("backbone.") for k in converted)
    with pytest.raises(ConversionError, match="decoder.dec_bbox_head.0.layers.0.weight"):
        convert_rtdetr_presnet({"decoder.dec_bbox_head.0.layers.0.weight": torch.zeros(1)})
    # The pooled shortcut of a strided stage has the extra ".conv": a stage-0 style name is wrong.
    with pytest.raises(ConversionError, match="res_layers.1.blocks.0.short.conv.weight"):
        convert_rtdetr_presnet({"res_layers.1.blocks.0.short.conv.weight": torch.zeros(1)})
