"""Checkpoint converters and tools/convert_checkpoint.py, on synthesised key sets.

The source key sets are written out here from the published layouts (detectron2's R-50.pkl and
detrex's DAB-DETR), not derived from the converters, so a wrong rule cannot hide itself.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sqr.modeling.backbone import ResNet
from sqr.modeling.converters import (
    CONVERTERS,
    ConversionError,
    convert,
    convert_detectron2_resnet,
    convert_detrex_dab_detr,
)
from sqr.tools import convert_checkpoint

REPO = Path(__file__).resolve().parents[2]
NORM = ("weight", "bias", "running_mean", "running_var")
R50_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}
D = 256  # DAB-DETR hidden size


class Filler:
    """Makes tensors of a given shape, each filled with its own value (cheap, and every tensor
    distinguishable); ``small=True`` makes one-element tensors for tests that ignore shapes."""

    def __init__(self, small: bool = False) -> None:
        self.count = 0
        self.small = small

    def __call__(self, *shape: int) -> torch.Tensor:
        self.count += 1
        return torch.full((1,) if self.small else shape, float(self.count))


def d2_r50_state(make: Callable[..., torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """detectron2 ResNet-50 (v1.5 bottlenecks) names and shapes."""
    state = {f"{prefix}stem.conv1.weight": make(64, 3, 7, 7)}
    state.update({f"{prefix}stem.conv1.norm.{f}": make(64) for f in NORM})
    in_ch = 64
    for k, blocks in R50_BLOCKS.items():
        width = 64 * 2 ** (k - 2)
        out_ch = 4 * width
        for j in range(blocks):
            block = f"{prefix}res{k}.{j}"
            block_in = in_ch if j == 0 else out_ch
            shapes = {
                1: (width, block_in, 1, 1),
                2: (width, width, 3, 3),
                3: (out_ch, width, 1, 1),
            }
            for n, shape in shapes.items():
                state[f"{block}.conv{n}.weight"] = make(*shape)
                state.update({f"{block}.conv{n}.norm.{f}": make(shape[0]) for f in NORM})
            if j == 0:
                state[f"{block}.shortcut.weight"] = make(out_ch, block_in, 1, 1)
                state.update({f"{block}.shortcut.norm.{f}": make(out_ch) for f in NORM})
        in_ch = out_ch
    return state


def _linear(make: Callable[..., torch.Tensor], name: str, out_f: int, in_f: int) -> dict:
    return {f"{name}.weight": make(out_f, in_f), f"{name}.bias": make(out_f)}


def _layer_norm(make: Callable[..., torch.Tensor], name: str) -> dict:
    return {f"{name}.weight": make(D), f"{name}.bias": make(D)}


def _detrex_ffn(make: Callable[..., torch.Tensor], name: str) -> dict:
    state = _linear(make, f"{name}.layers.0.0", 2048, D)
    state[f"{name}.layers.0.1.weight"] = make(1)
    state.update(_linear(make, f"{name}.layers.1", D, 2048))
    state[f"{name}.activation.weight"] = state[f"{name}.layers.0.1.weight"]  # same PReLU
    return state


def detrex_dab_detr_state(make: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
    """detrex DAB-DETR R50 (80 classes, 300 queries, 6+6 layers) names and shapes."""
    state = d2_r50_state(make, prefix="backbone.")
    state["input_proj.weight"] = make(D, 2048, 1, 1)
    state["input_proj.bias"] = make(D)
    state["anchor_box_embed.weight"] = make(300, 4)
    state.update(_linear(make, "class_embed", 80, D))
    for n, out_f in enumerate((D, D, 4)):
        state.update(_linear(make, f"bbox_embed.layers.{n}", out_f, D))
    enc = "transformer.encoder"
    for n in range(2):
        state.update(_linear(make, f"{enc}.query_scale.layers.{n}", D, D))
    for i in range(6):
        attn = f"{enc}.layers.{i}.attentions.0.attn"
        state[f"{attn}.in_proj_weight"] = make(3 * D, D)
        state[f"{attn}.in_proj_bias"] = make(3 * D)
        state.update(_linear(make, f"{attn}.out_proj", D, D))
        state.update(_detrex_ffn(make, f"{enc}.layers.{i}.ffns.0"))
        for n in range(2):
            state.update(_layer_norm(make, f"{enc}.layers.{i}.norms.{n}"))
    dec = "transformer.decoder"
    self_projs = ["query_content_proj", "query_pos_proj", "key_content_proj", "key_pos_proj"]
    self_projs += ["value_proj", "out_proj"]
    for i in range(6):
        layer = f"{dec}.layers.{i}"
        for proj in self_projs:
            state.update(_linear(make, f"{layer}.attentions.0.{proj}", D, D))
        cross_projs = ["query_content_proj", "query_pos_sine_proj", "key_content_proj"]
        cross_projs += ["key_pos_proj", "value_proj", "out_proj"]
        if i == 0:
            cross_projs.append("query_pos_proj")
        for proj in cross_projs:
            state.update(_linear(make, f"{layer}.attentions.1.{proj}", D, D))
        state.update(_detrex_ffn(make, f"{layer}.ffns.0"))
        for n in range(3):
            state.update(_layer_norm(make, f"{layer}.norms.{n}"))
    mlps = {
        "query_scale": [(D, D), (D, D)],
        "ref_point_head": [(D, 2 * D), (D, D)],
        "ref_anchor_head": [(D, D), (2, D)],
    }
    for mlp, shapes in mlps.items():
        for n, (out_f, in_f) in enumerate(shapes):
            state.update(_linear(make, f"{dec}.{mlp}.layers.{n}", out_f, in_f))
    state.update(_layer_norm(make, f"{dec}.post_norm_layer"))
    for n in range(3):
        for f in ("weight", "bias"):
            state[f"{dec}.bbox_embed.layers.{n}.{f}"] = state[f"bbox_embed.layers.{n}.{f}"]
    return state


def expected_dab_detr_names() -> set[str]:
    """Our DAB-DETR parameter names, written from the target naming scheme."""
    names = {f"backbone.{k}" for k in ResNet(50, out_features=("res5",)).state_dict()}
    names |= {"input_proj.weight", "input_proj.bias", "anchor_box_embed.weight"}
    names |= {"class_embed.weight", "class_embed.bias"}
    wb = ("weight", "bias")
    names |= {f"bbox_embed.layers.{n}.{f}" for n in range(3) for f in wb}
    names |= {f"encoder.query_scale.layers.{n}.{f}" for n in range(2) for f in wb}
    ffn = ["linear1.weight", "linear1.bias", "activation.weight", "linear2.weight", "linear2.bias"]
    for i in range(6):
        layer = f"encoder.layers.{i}"
        names |= {f"{layer}.self_attn.{p}" for p in ("in_proj_weight", "in_proj_bias")}
        names |= {f"{layer}.self_attn.out_proj.{f}" for f in wb}
        names |= {f"{layer}.ffn.{p}" for p in ffn}
        names |= {f"{layer}.norm{n}.{f}" for n in (1, 2) for f in wb}
    self_projs = ["query_content_proj", "query_pos_proj", "key_content_proj", "key_pos_proj"]
    self_projs += ["value_proj", "out_proj"]
    cross_projs = [p for p in self_projs if p != "query_pos_proj"] + ["query_pos_sine_proj"]
    for i in range(6):
        layer = f"decoder.layers.{i}"
        names |= {f"{layer}.self_attn.{p}.{f}" for p in self_projs for f in wb}
        names |= {f"{layer}.cross_attn.{p}.{f}" for p in cross_projs for f in wb}
        if i == 0:
            names |= {f"{layer}.cross_attn.query_pos_proj.{f}" for f in wb}
        names |= {f"{layer}.ffn.{p}" for p in ffn}
        names |= {f"{layer}.norm{n}.{f}" for n in (1, 2, 3) for f in wb}
    for mlp in ("query_scale", "ref_point_head", "ref_anchor_head"):
        names |= {f"decoder.{mlp}.layers.{n}.{f}" for n in range(2) for f in wb}
    names |= {f"decoder.norm.{f}" for f in wb}
    return names


# ----------------------------------------------------------------------------- detectron2 ResNet


def test_detectron2_r50_loads_strictly_into_resnet() -> None:
    state = d2_r50_state(Filler())
    state["stem.fc.weight"] = torch.zeros(1000, 2048)  # convert-torchvision-to-d2 keeps the fc
    state["stem.fc.bias"] = torch.zeros(1000)
    state["res3.0.conv2.norm.num_batches_tracked"] = torch.tensor(5)
    probe = state["res4.2.conv2.norm.running_var"]

    converted = convert_detectron2_resnet(state, prefix="")
    model = ResNet(depth=50, out_features=("res2", "res3", "res4", "res5"))
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.layer3[2].bn2.running_var, probe)
    assert torch.equal(model.layer1[0].downsample[0].weight, state["res2.0.shortcut.weight"])
    assert torch.equal(model.bn1.weight, state["stem.conv1.norm.weight"])


def test_detectron2_prefix_handling() -> None:
    bare = d2_r50_state(Filler(small=True))
    prefixed = d2_r50_state(Filler(small=True), prefix="backbone.")
    out_bare = convert_detectron2_resnet(bare)
    out_prefixed = convert_detectron2_resnet(prefixed)
    assert out_bare.keys() == out_prefixed.keys()
    assert all(k.startswith("backbone.") for k in out_bare)
    assert "backbone.layer4.2.conv3.weight" in out_bare


def test_detectron2_unknown_key_is_named() -> None:
    state = d2_r50_state(Filler(small=True))
    state["res2_0_branch2a_w"] = torch.zeros(1)  # a Caffe2-named MSRA key
    with pytest.raises(ConversionError, match="res2_0_branch2a_w") as info:
        convert_detectron2_resnet(state)
    assert info.value.key == "res2_0_branch2a_w"


def test_detectron2_collision_is_named() -> None:
    state = {"stem.conv1.weight": torch.zeros(1), "backbone.stem.conv1.weight": torch.ones(1)}
    with pytest.raises(ConversionError, match="both map to 'backbone.conv1.weight'"):
        convert_detectron2_resnet(state)


# ----------------------------------------------------------------------------- detrex DAB-DETR


def test_detrex_dab_detr_key_set() -> None:
    state = detrex_dab_detr_state(Filler(small=True))
    converted = convert_detrex_dab_detr(state)
    expected = expected_dab_detr_names()
    assert set(converted) == expected, (
        f"missing {sorted(expected - set(converted))[:10]}, "
        f"extra {sorted(set(converted) - expected)[:10]}"
    )
    # 12 PReLU aliases and 6 bbox_embed aliases are dropped.
    assert len(state) - len(converted) == 12 + 6
    pairs = {
        "encoder.layers.4.self_attn.in_proj_weight": (
            "transformer.encoder.layers.4.attentions.0.attn.in_proj_weight"
        ),
        "encoder.layers.1.norm2.bias": "transformer.encoder.layers.1.norms.1.bias",
        "decoder.layers.5.norm3.weight": "transformer.decoder.layers.5.norms.2.weight",
        "decoder.layers.2.cross_attn.query_pos_sine_proj.weight": (
            "transformer.decoder.layers.2.attentions.1.query_pos_sine_proj.weight"
        ),
        "decoder.layers.3.ffn.activation.weight": (
            "transformer.decoder.layers.3.ffns.0.layers.0.1.weight"
        ),
        "decoder.norm.weight": "transformer.decoder.post_norm_layer.weight",
        "backbone.layer3.5.bn3.running_mean": "backbone.res4.5.conv3.norm.running_mean",
    }
    for ours, theirs in pairs.items():
        assert converted[ours] is state[theirs], ours


@pytest.mark.parametrize(
    "alias_key",
    [
        "transformer.encoder.layers.3.ffns.0.activation.weight",
        "transformer.decoder.layers.0.ffns.0.activation.weight",
        "transformer.decoder.bbox_embed.layers.2.bias",
    ],
)
def test_detrex_alias_mismatch_is_named(alias_key: str) -> None:
    state = detrex_dab_detr_state(Filler(small=True))
    state[alias_key] = state[alias_key] + 1
    with pytest.raises(ConversionError, match="differs") as info:
        convert_detrex_dab_detr(state)
    assert info.value.key == alias_key and alias_key in str(info.value)


def test_detrex_alias_without_source_is_named() -> None:
    state = detrex_dab_detr_state(Filler(small=True))
    del state["transformer.encoder.layers.0.ffns.0.layers.0.1.weight"]
    key = "transformer.encoder.layers.0.ffns.0.activation.weight"
    with pytest.raises(ConversionError, match="not in the checkpoint") as info:
        convert_detrex_dab_detr(state)
    assert info.value.key == key


@pytest.mark.parametrize(
    "bad_key",
    [
        "transformer.encoder.layers.0.norms.2.weight",  # the encoder has two norms per layer
        "transformer.decoder.layers.1.attentions.2.value_proj.weight",
        "criterion.empty_weight",
        "stem.conv1.weight",  # backbone keys must carry the backbone. prefix here
        "module.class_embed.weight",
    ],
)
def test_detrex_unknown_key_is_named(bad_key: str) -> None:
    state = detrex_dab_detr_state(Filler(small=True))
    state[bad_key] = torch.zeros(1)
    with pytest.raises(ConversionError, match="no conversion rule") as info:
        convert_detrex_dab_detr(state)
    assert info.value.key == bad_key and f"'{bad_key}'" in str(info.value)


def test_convert_dispatch() -> None:
    assert set(CONVERTERS) >= {"detectron2_resnet", "detrex_dab_detr"}
    state = d2_r50_state(Filler(small=True))
    assert convert(state, "detectron2_resnet") == convert_detectron2_resnet(state)
    with pytest.raises(ValueError, match="detectron2_resnet, detrex_dab_detr"):
        convert(state, "mmdet_nope")


# ----------------------------------------------------------------------------- the tool


@pytest.mark.parametrize("fmt", ["detrex_dab_detr", "auto"])
def test_tool_converts_detrex_file(tmp_path: Path, fmt: str) -> None:
    src, dst = tmp_path / "detrex.pth", tmp_path / "out" / "sqr.pth"
    torch.save({"model": detrex_dab_detr_state(Filler(small=True)), "iteration": 7}, src)
    assert convert_checkpoint.main(["--format", fmt, str(src), str(dst)]) == 0
    data = torch.load(dst, weights_only=True)
    assert set(data["model"]) == expected_dab_detr_names()
    assert data["__converted_from__"] == "detrex_dab_detr"
    assert data["__source__"] == str(src)


def test_tool_auto_detects_detectron2_pkl(tmp_path: Path) -> None:
    src, dst = tmp_path / "R-50.pkl", tmp_path / "r50.pth"
    arrays = {k: v.numpy() for k, v in d2_r50_state(Filler(small=True)).items()}
    arrays["stem.fc.weight"] = np.zeros(1, dtype=np.float32)
    with open(src, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "torchvision"}, f)
    assert convert_checkpoint.main(["--format", "auto", str(src), str(dst)]) == 0
    data = torch.load(dst, weights_only=True)
    assert data["__converted_from__"] == "detectron2_resnet"
    assert "backbone.layer4.0.downsample.1.running_var" in data["model"]


def test_tool_failure_leaves_output_untouched(tmp_path: Path, capsys) -> None:
    state = detrex_dab_detr_state(Filler(small=True))
    state["transformer.decoder.mystery.weight"] = torch.zeros(1)
    src, dst = tmp_path / "bad.pth", tmp_path / "existing.pth"
    torch.save({"model": state}, src)
    dst.write_bytes(b"previous contents")
    assert convert_checkpoint.main(["--format", "detrex_dab_detr", str(src), str(dst)]) == 1
    assert dst.read_bytes() == b"previous contents"
    assert "transformer.decoder.mystery.weight" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.pth", "existing.pth"]


def test_tool_auto_refuses_unknown_layout(tmp_path: Path, capsys) -> None:
    src = tmp_path / "other.pth"
    torch.save({"model": {"encoder.layers.0.norm1.weight": torch.zeros(1)}}, src)
    assert convert_checkpoint.main(["--format", "auto", str(src), str(tmp_path / "o.pth")]) == 1
    assert "matches no known format" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def test_tool_auto_says_a_native_checkpoint_needs_no_conversion(tmp_path: Path, capsys) -> None:
    src = tmp_path / "model_final.pth"
    state = {"backbone.stem.conv1.weight": torch.zeros(1), "decoder.norm.weight": torch.zeros(1)}
    torch.save({"model": state, "iteration": 9}, src)
    assert convert_checkpoint.main(["--format", "auto", str(src), str(tmp_path / "o.pth")]) == 1
    assert "already has sqr's parameter names" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize("link", [False, True])
def test_tool_refuses_to_overwrite_its_input(tmp_path: Path, capsys, link: bool) -> None:
    src = tmp_path / "detrex.pth"
    torch.save({"model": detrex_dab_detr_state(Filler(small=True))}, src)
    before = src.read_bytes()
    dst = tmp_path / "alias.pth" if link else tmp_path / "sub" / ".." / "detrex.pth"
    if link:
        os.link(src, dst)  # another name for the same file (same inode)
    (tmp_path / "sub").mkdir()
    assert convert_checkpoint.main(["--format", "detrex_dab_detr", str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert "is the input file" in err and str(dst) in err
    assert src.read_bytes() == before


@pytest.mark.parametrize("content", [{}, {"model": {}}])
def test_tool_refuses_an_empty_checkpoint(tmp_path: Path, capsys, content: dict) -> None:
    src, dst = tmp_path / "empty.pth", tmp_path / "out.pth"
    torch.save(content, src)
    assert convert_checkpoint.main(["--format", "detectron2_resnet", str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert f"{src}: no parameters to convert as detectron2_resnet" in err
    assert not dst.exists()


def test_tool_format_choices_are_the_converters() -> None:
    assert convert_checkpoint.FORMATS == tuple(sorted(CONVERTERS))
