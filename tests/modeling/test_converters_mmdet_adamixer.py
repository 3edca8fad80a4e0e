"""mmdet AdaMixer / SQR-AdaMixer checkpoints: the full key sets (Fangyi-Chen/SQR) load
exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from helpers.tiny import TINY_ADAMIXER

from sqr.config import LazyConfig, instantiate
from sqr.modeling.converters import (
    CONVERTERS,
    ConversionError,
    convert_mmdet_adamixer,
    detect_format,
)

CONFIGS = Path(__file__).resolve().parents[2] / "projects/sqr/configs"


def mmdet_adamixer_state(
    *,
    depth: int = 50,
    num_stages: int = 6,
    num_queries: int = 100,
    dim: int = 256,
    feedforward: int = 2048,
    num_classes: int = 80,
    heads: int = 8,
    groups: int = 4,
    in_points: int = 32,
    out_points: int = 128,
    device: str = "meta",
) -> dict[str, torch.Tensor]:
    """An mmdet ``QueryBased`` AdaMixer state_dict, names and shapes as the SQR release saves them
    (e.g. ``parameter_generator`` [4 * (64 * 64 + 32 * 128) = 32768, 256] at full size)."""

    def t(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=device)

    state: dict[str, torch.Tensor] = {}
    # mmdet's ResNet has torchvision's names; mmdet keeps BatchNorm's num_batches_tracked.
    with torch.device("meta"):
        resnet = getattr(torchvision.models, f"resnet{depth}")()
    for key, value in resnet.state_dict().items():
        if not key.startswith("fc."):
            state[f"backbone.{key}"] = torch.zeros(value.shape, dtype=value.dtype, device=device)
    stage_channels = [64 * 2**i * (4 if depth >= 50 else 1) for i in range(4)]
    for i, c_in in enumerate(stage_channels):
        state[f"neck.lateral_convs.{i}.conv.weight"] = t(dim, c_in, 1, 1)
        state[f"neck.lateral_convs.{i}.conv.bias"] = t(dim)
    state["neck.gn_out.weight"], state["neck.gn_out.bias"] = t(dim), t(dim)
    # The proposal boxes are real values: the converter checks them.
    state["rpn_head.init_proposal_bboxes.weight"] = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(
        num_queries, 1
    )
    state["rpn_head.init_content_features.weight"] = t(num_queries, dim)
    c = dim // groups
    for s in range(num_stages):
        p = f"roi_head.bbox_head.{s}."
        state[p + "attention.attn.in_proj_weight"] = t(3 * dim, dim)
        state[p + "attention.attn.in_proj_bias"] = t(3 * dim)
        state[p + "attention.attn.out_proj.weight"] = t(dim, dim)
        state[p + "attention.attn.out_proj.bias"] = t(dim)
        state[p + "ffn.layers.0.0.weight"], state[p + "ffn.layers.0.0.bias"] = (
            t(feedforward, dim),
            t(feedforward),
        )
        state[p + "ffn.layers.1.weight"], state[p + "ffn.layers.1.bias"] = (
            t(dim, feedforward),
            t(dim),
        )
        for norm in (
            "attention_norm",
            "ffn_norm",
            "sampling_n_mixing.norm",
            "cls_fcs.1",
            "reg_fcs.1",
        ):
            state[f"{p}{norm}.weight"], state[f"{p}{norm}.bias"] = t(dim), t(dim)
        for fc in ("cls_fcs.0", "reg_fcs.0"):
            state[f"{p}{fc}.weight"], state[f"{p}{fc}.bias"] = t(dim, dim), t(dim)
        state[p + "fc_cls.weight"], state[p + "fc_cls.bias"] = t(num_classes, dim), t(num_classes)
        state[p + "fc_reg.weight"], state[p + "fc_reg.bias"] = t(4, dim), t(4)
        m = p + "sampling_n_mixing."
        state[m + "sampling_offset_generator.0.weight"] = t(groups * in_points * 3, dim)
        state[m + "sampling_offset_generator.0.bias"] = t(groups * in_points * 3)
        generated = groups * (c * c + in_points * out_points)
        state[m + "adaptive_mixing.parameter_generator.0.weight"] = t(generated, dim)
        state[m + "adaptive_mixing.parameter_generator.0.bias"] = t(generated)
        state[m + "adaptive_mixing.out_proj.weight"] = t(dim, groups * out_points * c)
        state[m + "adaptive_mixing.out_proj.bias"] = t(dim)
        state[p + "iof_tau"] = t(heads)
    return state


def meta_model(config: str, *overrides: str) -> torch.nn.Module:
    cfg = LazyConfig.load(str(CONFIGS / config))
    LazyConfig.apply_overrides(cfg, list(overrides))
    with torch.device("meta"):  # full-size shapes without allocating 100M+ parameters
        return instantiate(cfg.model)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize(
    ("config", "kwargs"),
    [
        ("sqr_adamixer_r50_1x.py", {}),
        ("adamixer_r50_1x.py", {}),
        (
            "sqr_adamixer_r101_7stage_300q_3x.py",
            {"depth": 101, "num_stages": 7, "num_queries": 300},
        ),
    ],
)
def test_full_key_set_converts_exactly(config: str, kwargs: dict) -> None:
    source = mmdet_adamixer_state(**kwargs)
    # The SQR release's full-size shapes.
    mixing = "roi_head.bbox_head.0.sampling_n_mixing.adaptive_mixing."
    assert source[mixing + "parameter_generator.0.weight"].shape == (32768, 256)
    assert source[mixing + "out_proj.weight"].shape == (256, 32768)
    assert source["roi_head.bbox_head.0.iof_tau"].shape == (8,)
    assert detect_format(source) == "mmdet_adamixer"
    converted = CONVERTERS["mmdet_adamixer"](source)
    expected = shapes(meta_model(config).state_dict())
    assert sorted(set(expected) - set(converted)) == []  # nothing missing
    assert sorted(set(converted) - set(expected)) == []  # nothing unexpected
    assert shapes(converted) == expected


def test_tiny_checkpoint_loads_into_the_model_with_values() -> None:
    tiny = dict(
        depth=18,
        dim=32,
        feedforward=64,
        num_classes=5,
        heads=4,
        groups=2,
        in_points=4,
        out_points=8,
        num_queries=10,
    )
    source = mmdet_adamixer_state(**tiny, device="cpu")
    gen = torch.Generator().manual_seed(0)
    for key, value in source.items():
        if value.is_floating_point() and "init_proposal_bboxes" not in key:
            value.copy_(torch.randn(value.shape, generator=gen))
    cfg = LazyConfig.load(str(CONFIGS / "sqr_adamixer_r50_1x.py"))
    # FrozenBN as in the recipe: the BatchNorm counters are then dropped, not missing.
    LazyConfig.apply_overrides(
        cfg, [*TINY_ADAMIXER, "model.backbone.norm=FrozenBN", "model.backbone.freeze_at=2"]
    )
    model = instantiate(cfg.model)
    result = model.load_state_dict(convert_mmdet_adamixer(source), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    stage = model.decoder.layers[2]
    p = "roi_head.bbox_head.2."
    assert torch.equal(stage.self_attn.iof_tau, source[p + "iof_tau"])
    assert torch.equal(stage.cls_branch[3].weight, source[p + "fc_cls.weight"])
    assert torch.equal(stage.reg_branch[1].bias, source[p + "reg_fcs.1.bias"])
    assert torch.equal(
        stage.mixing.out_proj.weight,
        source[p + "sampling_n_mixing.adaptive_mixing.out_proj.weight"],
    )
    assert torch.equal(model.neck.norm.weight, source["neck.gn_out.weight"])
    assert torch.equal(
        model.backbone.layer3[1].bn2.running_var, source["backbone.layer3.1.bn2.running_var"]
    )
    assert torch.equal(
        model.query_generator.content.weight, source["rpn_head.init_content_features.weight"]
    )


def test_unknown_key_is_named() -> None:
    source = mmdet_adamixer_state(num_stages=1)
    source["roi_head.bbox_head.0.shadow.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"roi_head\.bbox_head\.0\.shadow\.weight") as info:
        convert_mmdet_adamixer(source)
    assert info.value.key == "roi_head.bbox_head.0.shadow.weight"


def test_proposal_boxes_other_than_the_whole_image_are_rejected() -> None:
    source = mmdet_adamixer_state(num_stages=1)
    source["rpn_head.init_proposal_bboxes.weight"][3] = torch.tensor([0.2, 0.5, 0.4, 1.0])
    with pytest.raises(ConversionError, match="init_proposal_bboxes") as info:
        convert_mmdet_adamixer(source)
    assert info.value.key == "rpn_head.init_proposal_bboxes.weight"


def test_detect_format_recognises_either_head() -> None:
    assert detect_format({"rpn_head.init_content_features.weight": torch.zeros(1)}) == (
        "mmdet_adamixer"
    )
    assert detect_format({"roi_head.bbox_head.0.iof_tau": torch.zeros(1)}) == "mmdet_adamixer"
