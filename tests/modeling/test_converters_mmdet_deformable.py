"""mmdet Deformable-DETR checkpoints and torchvision ResNet weights -> sqr, on synthesised key
sets written out here from the published layouts (Fangyi-Chen/SQR at b576a6e), not from the
converters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.deformable_keys import ffn, linear, msda, norm

from sqr.config import LazyConfig, instantiate
from sqr.modeling.converters import (
    CONVERTERS,
    ConversionError,
    convert,
    convert_mmdet_deformable_detr,
    convert_mmdet_deformable_detr_refine,
    convert_torchvision_resnet,
    detect_format,
)
from sqr.tools import convert_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "projects/sqr/configs"
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
D, FFN_DIM, QUERIES, CLASSES, LAYERS = 256, 1024, 300, 80, 6


class Filler:
    """Tensors of a given shape, each filled with its own value (every tensor distinguishable)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *shape: int) -> torch.Tensor:
        self.count += 1
        return torch.full(shape, float(self.count))


def torchvision_r50_state(make: Callable[..., torch.Tensor], prefix: str = "") -> dict:
    """torchvision / mmdet ResNet-50 names and shapes (BatchNorm with num_batches_tracked)."""

    def bn(name: str, channels: int) -> dict:
        return {f"{name}.{f}": make(channels) for f in BN}

    state = {f"{prefix}conv1.weight": make(64, 3, 7, 7), **bn(f"{prefix}bn1", 64)}
    in_ch = 64
    for k, blocks in enumerate((3, 4, 6, 3), start=1):
        width = 64 * 2 ** (k - 1)
        for j in range(blocks):
            block = f"{prefix}layer{k}.{j}"
            block_in = in_ch if j == 0 else 4 * width
            for n, shape in {
                1: (width, block_in, 1, 1),
                2: (width, width, 3, 3),
                3: (4 * width, width, 1, 1),
            }.items():
                state[f"{block}.conv{n}.weight"] = make(*shape)
                state.update(bn(f"{block}.bn{n}", shape[0]))
            if j == 0:
                state[f"{block}.downsample.0.weight"] = make(4 * width, block_in, 1, 1)
                state.update(bn(f"{block}.downsample.1", 4 * width))
        in_ch = 4 * width
    return state


def mmdet_deformable_state(
    make: Callable[..., torch.Tensor], shared_heads: bool = True, two_stage: bool = False
) -> dict:
    """mmdet DeformableDETR of the SQR release: shared heads, saved once per decoder layer;
    refinement has distinct heads; two-stage adds a head and proposal layers."""
    state = torchvision_r50_state(make, prefix="backbone.")
    for i, c_in in enumerate((512, 1024, 2048)):
        state[f"neck.convs.{i}.conv.weight"] = make(D, c_in, 1, 1)
        state.update(norm(make, f"neck.convs.{i}.gn"))
    state["neck.extra_convs.0.conv.weight"] = make(D, 2048, 3, 3)
    state.update(norm(make, "neck.extra_convs.0.gn"))
    t = "bbox_head.transformer"
    state[f"{t}.level_embeds"] = make(4, D)
    if two_stage:
        state.update(linear(make, f"{t}.enc_output", D, D))
        state.update(norm(make, f"{t}.enc_output_norm"))
        state.update(linear(make, f"{t}.pos_trans", 2 * D, 2 * D))
        state.update(norm(make, f"{t}.pos_trans_norm", 2 * D))
    else:
        state["bbox_head.query_embedding.weight"] = make(QUERIES, 2 * D)
        state.update(linear(make, f"{t}.reference_points", 2, D))
    for i in range(LAYERS):
        enc = f"{t}.encoder.layers.{i}"
        state.update(msda(make, f"{enc}.attentions.0"))
        state.update(ffn(make, enc))
        for n in range(2):
            state.update(norm(make, f"{enc}.norms.{n}"))
        dec = f"{t}.decoder.layers.{i}"
        state[f"{dec}.attentions.0.attn.in_proj_weight"] = make(3 * D, D)
        state[f"{dec}.attentions.0.attn.in_proj_bias"] = make(3 * D)
        state.update(linear(make, f"{dec}.attentions.0.attn.out_proj", D, D))
        state.update(msda(make, f"{dec}.attentions.1"))
        state.update(ffn(make, dec))
        for n in range(3):
            state.update(norm(make, f"{dec}.norms.{n}"))
    head: dict[str, torch.Tensor] = {}
    for k in range(LAYERS + int(two_stage)):
        if k == 0 or not shared_heads:  # shared: the same values saved once per layer
            head = {
                **linear(make, "cls", CLASSES, D),
                **linear(make, "reg.0", D, D),
                **linear(make, "reg.2", D, D),
                **linear(make, "reg.4", 4, D),
            }
        for name, value in head.items():
            kind, rest = name.split(".", 1)
            state[f"bbox_head.{kind}_branches.{k}.{rest}"] = value
    return state


def build_model(config: str) -> torch.nn.Module:
    cfg = LazyConfig.load(str(CONFIGS / config))
    return instantiate(cfg.model)


def test_sqr_release_loads_into_deformable_detr_r50() -> None:
    state = mmdet_deformable_state(Filler())
    assert detect_format(state) == "mmdet_deformable_detr"
    converted = convert_mmdet_deformable_detr(state)
    model = build_model("sqr_deformable_detr_r50_50ep.py")
    result = model.load_state_dict(converted, strict=True)  # also checks every shape
    assert not result.missing_keys and not result.unexpected_keys
    # The six head copies collapsed onto the shared head; values moved, not rebuilt.
    assert converted["class_embed.weight"] is state["bbox_head.cls_branches.0.weight"]
    assert converted["bbox_embed.layers.2.bias"] is state["bbox_head.reg_branches.0.4.bias"]
    assert (
        converted["decoder.layers.5.norm3.weight"]
        is state["bbox_head.transformer.decoder.layers.5.norms.2.weight"]
    )
    assert converted["query_embedding.weight"] is state["bbox_head.query_embedding.weight"]


@pytest.mark.parametrize(
    ("config", "two_stage"),
    [
        ("deformable_detr_refine_r50_50ep.py", False),
        ("deformable_detr_two_stage_r50_50ep.py", True),
    ],
)
def test_per_layer_heads_load_into_refine_and_two_stage(config: str, two_stage: bool) -> None:
    state = mmdet_deformable_state(Filler(), shared_heads=False, two_stage=two_stage)
    assert detect_format(state) == "mmdet_deformable_detr_refine"
    converted = convert_mmdet_deformable_detr_refine(state)
    result = build_model(config).load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    last = LAYERS if two_stage else LAYERS - 1  # two-stage: the proposals' head is the last
    assert (
        converted[f"bbox_embed.{last}.layers.1.weight"]
        is state[f"bbox_head.reg_branches.{last}.2.weight"]
    )


def test_differing_head_copy_is_named() -> None:
    state = mmdet_deformable_state(Filler())
    state["bbox_head.reg_branches.3.2.weight"] = state["bbox_head.reg_branches.3.2.weight"] + 1
    with pytest.raises(ConversionError, match="should equal") as info:
        convert_mmdet_deformable_detr(state)
    assert info.value.key == "bbox_head.reg_branches.3.2.weight"


@pytest.mark.parametrize(
    "bad_key",
    [
        "bbox_head.transformer.encoder.layers.0.norms.2.weight",  # encoder layers have 2 norms
        "bbox_head.transformer.decoder.layers.1.attentions.2.value_proj.weight",
        "bbox_head.reg_branches.0.6.weight",  # the branch has Linears at 0, 2, 4 only
        "bbox_head.fc_cls.weight",  # overridden away in Deformable-DETR's head
        "neck.convs.0.conv.bias",  # ConvModule with a norm has no bias
        "backbone.layer5.0.conv1.weight",
    ],
)
def test_unknown_key_is_named(bad_key: str) -> None:
    state = mmdet_deformable_state(lambda *shape: torch.zeros(1))
    state[bad_key] = torch.zeros(1)
    with pytest.raises(ConversionError, match="no conversion rule") as info:
        convert_mmdet_deformable_detr(state)
    assert info.value.key == bad_key and f"'{bad_key}'" in str(info.value)


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_torchvision_resnet_loads_into_the_backbone(prefix: str) -> None:
    state = torchvision_r50_state(Filler(), prefix=prefix)
    state[f"{prefix}fc.weight"], state[f"{prefix}fc.bias"] = (
        torch.zeros(1000, 2048),
        torch.zeros(1000),
    )
    if not prefix:
        assert detect_format(state) == "torchvision_resnet"
    converted = convert(state, "torchvision_resnet")
    model = build_model("deformable_detr_r50_50ep.py")
    backbone = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert set(converted) == backbone  # classifier and num_batches_tracked dropped
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and backbone.isdisjoint(result.missing_keys)
    assert (
        converted["backbone.layer3.5.bn2.running_var"] is state[f"{prefix}layer3.5.bn2.running_var"]
    )


def test_registered_and_torchvision_rules_are_exact() -> None:
    assert {"mmdet_deformable_detr", "mmdet_deformable_detr_refine", "torchvision_resnet"} <= set(
        CONVERTERS
    )
    with pytest.raises(ConversionError, match="no conversion rule"):
        convert_torchvision_resnet({"layer1.0.conv4.weight": torch.zeros(1)})


def test_tool_converts_torchvision_file(tmp_path: Path) -> None:
    state = torchvision_r50_state(lambda *shape: torch.zeros(1))
    state["fc.weight"], state["fc.bias"] = torch.zeros(1), torch.zeros(1)
    src, dst = tmp_path / "resnet50.pth", tmp_path / "out.pth"
    torch.save(state, src)  # a bare state_dict, as torchvision publishes it
    assert convert_checkpoint.main(["--format", "auto", str(src), str(dst)]) == 0
    data = torch.load(dst, weights_only=True)
    assert data["__converted_from__"] == "torchvision_resnet"
    assert "backbone.layer4.2.conv3.weight" in data["model"] and "fc.weight" not in data["model"]
