"""ChannelMapper in both references' layouts: GroupNorm by hand, extra levels, parameter names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sqr.config import LazyConfig, instantiate
from sqr.modeling.neck import ChannelMapper

MODELS = Path(__file__).resolve().parents[2] / "projects/sqr/configs/models"


def group_norm_by_hand(x: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of x [B, C, H, W]: statistics over (channels of the group, H, W)."""
    groups = x.unflatten(1, (norm.num_groups, -1))
    mean = groups.mean(dim=(2, 3, 4), keepdim=True)
    var = groups.var(dim=(2, 3, 4), unbiased=False, keepdim=True)
    normed = ((groups - mean) / torch.sqrt(var + norm.eps)).flatten(1, 2)
    return normed * norm.weight[:, None, None] + norm.bias[:, None, None]


def perturb_norms(neck: ChannelMapper) -> None:
    """Move every GroupNorm off weight 1, bias 0, so that a swapped norm would show."""
    with torch.no_grad():
        for module in neck.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 2), module.bias.normal_()


def test_shared_norm_normalises_every_level_with_one_group_norm() -> None:
    torch.manual_seed(0)
    neck = ChannelMapper(
        in_channels=[3, 5],
        out_channels=8,
        num_extra_levels=0,
        num_groups=2,
        bias=True,
        shared_norm=True,
        in_features=["a", "b"],
    )
    perturb_norms(neck)
    features = {"a": torch.randn(2, 3, 6, 6), "b": torch.randn(2, 5, 3, 3), "c": torch.randn(1)}
    outputs = neck(features)  # "c" is not in in_features: ignored
    assert len(list(neck.parameters())) == 6  # 2 convs x (weight, bias) + one GroupNorm
    assert len(outputs) == neck.num_levels == 2
    for name, conv, out in zip(["a", "b"], neck.convs, outputs, strict=True):
        expected = group_norm_by_hand(conv(features[name]), neck.norm)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_per_level_norms_and_extra_levels() -> None:
    torch.manual_seed(0)
    neck = ChannelMapper(in_channels=[3, 5], out_channels=8, num_extra_levels=2, num_groups=2)
    perturb_norms(neck)
    features = [torch.randn(2, 3, 16, 16), torch.randn(2, 5, 8, 8)]
    outputs = neck(features)
    assert neck.num_levels == len(outputs) == 4
    # Each extra level halves the resolution (3x3, stride 2, padding 1).
    assert [x.shape[-1] for x in outputs] == [16, 8, 4, 2]
    for level, x, out in zip(neck.convs, features, outputs[:2], strict=True):
        expected = group_norm_by_hand(level.conv(x), level.norm)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # The first extra level reads the last *raw* input (5 channels), the next the extra before.
    first, second = neck.extra_convs
    assert first.conv.in_channels == 5 and second.conv.in_channels == 8
    expected = group_norm_by_hand(first.conv(features[-1]), first.norm)
    torch.testing.assert_close(outputs[2], expected, rtol=1e-5, atol=1e-5)
    expected = group_norm_by_hand(second.conv(outputs[2]), second.norm)
    torch.testing.assert_close(outputs[3], expected, rtol=1e-5, atol=1e-5)


def test_convolutions_start_xavier_with_zero_bias() -> None:
    torch.manual_seed(0)
    # fan_out > 5 fan_in, so xavier's bound is below PyTorch's default (1 / sqrt(fan_in)).
    neck = ChannelMapper(in_channels=[4], out_channels=64, num_groups=4, bias=True)
    for name, param in neck.named_parameters():
        if name.endswith("conv.bias"):
            assert not param.any(), name
        elif name.endswith("conv.weight"):
            # xavier_uniform_: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
            fan_in, fan_out = param[0].numel(), param.shape[0] * param[0, 0].numel()
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert 0.9 * bound < param.abs().max() <= bound, name


def neck_keys(model_config: str) -> list[str]:
    cfg = LazyConfig.load(str(MODELS / model_config))
    return list(instantiate(cfg.model.neck).state_dict())


def test_each_recipe_keeps_its_parameter_names() -> None:
    # The names the converters (mmdet_deformable, detrex_deformable, mmdet_adamixer) write and
    # the released checkpoints of this project hold.
    assert neck_keys("deformable_detr_r50.py") == [
        f"{level}.{module}.{p}"
        for level in ("convs.0", "convs.1", "convs.2", "extra_convs.0")
        for module, p in (("conv", "weight"), ("norm", "weight"), ("norm", "bias"))
    ]
    assert neck_keys("adamixer_r50.py") == [
        *(f"convs.{i}.{p}" for i in range(4) for p in ("weight", "bias")),
        "norm.weight",
        "norm.bias",
    ]


def test_features_must_come_as_in_features_says() -> None:
    by_name = ChannelMapper(in_channels=[3], num_extra_levels=0, num_groups=1, in_features=["a"])
    in_order = ChannelMapper(in_channels=[3], num_extra_levels=0, num_groups=1)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(TypeError, match=r"in_features=\('a',\)\) takes a dict, got list"):
        by_name([x])
    with pytest.raises(TypeError, match="in_features=None.*sequence of levels, got dict"):
        in_order({"a": x})
    with pytest.raises(ValueError, match="got 2 feature levels, expected 1"):
        in_order([x, x])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": []}, "at least one input level"),
        ({"in_channels": [3], "num_extra_levels": -1}, "num_extra_levels must be >= 0, got -1"),
        ({"in_channels": [3], "shared_norm": True}, "shared_norm=True needs num_extra_levels=0"),
        ({"in_channels": [3, 5], "in_features": ["a"]}, r"1 in_features \['a'\] but 2"),
    ],
)
def test_bad_options_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChannelMapper(**kwargs)
