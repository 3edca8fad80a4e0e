"""detrex Deformable-DETR checkpoints -> sqr, on key sets written out here from detrex's modules
(``projects/deformable_detr``, ``ChannelMapper``/``ConvNormAct``, ``BaseTransformerLayer``,
``FFN``, ``MultiScaleDeformableAttention``, detectron2's ResNet), not from the converter. detrex's
conversions of the original Deformable-DETR weights (the model-zoo ``*_converted`` entries) have
exactly these names: its ``converter.py`` renames every original key onto them."""

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
    convert_detrex_deformable_detr,
    detect_format,
)
from sqr.tools import convert_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "projects/sqr/configs"
NORM = ("weight", "bias", "running_mean", "running_var")  # detectron2 FrozenBN buffers
D, FFN_DIM, QUERIES, CLASSES, LAYERS = 256, 1024, 300, 80, 6
#: variant -> (our recipe, expected format)
VARIANTS = {
    "plain": ("deformable_detr_r50_50ep.py", "detrex_deformable_detr"),
    "refine": ("deformable_detr_refine_r50_50ep.py", "detrex_deformable_detr_refine"),
    "two_stage": ("deformable_detr_two_stage_r50_50ep.py", "detrex_deformable_detr_refine"),
}
#: variant -> the config made for these weights (recipe + ``model.neck.bias=True`` + detrex's
#: evaluation), named after their model zoo entry.
WEIGHT_CONFIGS = {
    "plain": "detrex_weights/deformable_detr_r50_converted.py",
    "refine": "detrex_weights/deformable_detr_r50_box_refine_converted.py",
    "two_stage": "detrex_weights/deformable_detr_r50_two_stage_converted.py",
}
#: detrex's ChannelMapper convolutions have biases (bias=True default); mmdet's, and our
#: default, not: these checkpoints load into a model built with ``model.neck.bias=True``.
NECK_CONV_BIASES = {
    f"neck.{m}.conv.bias" for m in ("convs.0", "convs.1", "convs.2", "extra_convs.0")
}


class Filler:
    """Tensors of a given shape, each filled with its own value (every tensor distinguishable);
    ``small=True`` makes one-element tensors for tests that ignore shapes."""

    def __init__(self, small: bool = False) -> None:
        self.count = 0
        self.small = small

    def __call__(self, *shape: int) -> torch.Tensor:
        self.count += 1
        return torch.full((1,) if self.small else shape, float(self.count))


def d2_r50_state(make: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 ResNet-50 (stride in the 3x3, FrozenBN) under ``backbone.``."""
    state = {"backbone.stem.conv1.weight": make(64, 3, 7, 7)}
    state.update({f"backbone.stem.conv1.norm.{f}": make(64) for f in NORM})
    in_ch = 64
    for k, blocks in {2: 3, 3: 4, 4: 6, 5: 3}.items():
        width = 64 * 2 ** (k - 2)
        for j in range(blocks):
            block = f"backbone.res{k}.{j}"
            block_in = in_ch if j == 0 else 4 * width
            shapes = {
                1: (width, block_in, 1, 1),
                2: (width, width, 3, 3),
                3: (4 * width, width, 1, 1),
            }
            for n, shape in shapes.items():
                state[f"{block}.conv{n}.weight"] = make(*shape)
                state.update({f"{block}.conv{n}.norm.{f}": make(shape[0]) for f in NORM})
            if j == 0:
                state[f"{block}.shortcut.weight"] = make(4 * width, block_in, 1, 1)
                state.update({f"{block}.shortcut.norm.{f}": make(4 * width) for f in NORM})
        in_ch = 4 * width
    return state


def _head(make, k: int) -> dict:
    state = linear(make, f"class_embed.{k}", CLASSES, D)
    for n, out_f in enumerate((D, D, 4)):
        state.update(linear(make, f"bbox_embed.{k}.layers.{n}", out_f, D))
    return state


def detrex_deformable_state(make: Callable[..., torch.Tensor], variant: str) -> dict:
    """detrex DeformableDETR R50 (300 queries, 80 classes, 6 + 6 layers, 4 levels)."""
    refine, two_stage = variant != "plain", variant == "two_stage"
    state = d2_r50_state(make)
    # ChannelMapper(kernel_size=1, num_outs=4, GroupNorm): ConvNormAct ``conv`` + ``norm``;
    # the extra level is a 3x3 stride-2 conv on res5.
    for i, c_in in enumerate((512, 1024, 2048)):
        state[f"neck.convs.{i}.conv.weight"] = make(D, c_in, 1, 1)
        state[f"neck.convs.{i}.conv.bias"] = make(D)
        state.update(norm(make, f"neck.convs.{i}.norm"))
    state["neck.extra_convs.0.conv.weight"] = make(D, 2048, 3, 3)
    state["neck.extra_convs.0.conv.bias"] = make(D)
    state.update(norm(make, "neck.extra_convs.0.norm"))
    state["transformer.level_embeds"] = make(4, D)
    if two_stage:
        state.update(linear(make, "transformer.enc_output", D, D))
        state.update(norm(make, "transformer.enc_output_norm"))
        state.update(linear(make, "transformer.pos_trans", 2 * D, 2 * D))
        state.update(norm(make, "transformer.pos_trans_norm", 2 * D))
    else:
        state["query_embedding.weight"] = make(QUERIES, 2 * D)
        state.update(linear(make, "transformer.reference_points", 2, D))
    for i in range(LAYERS):
        enc = f"transformer.encoder.layers.{i}"
        state.update(msda(make, f"{enc}.attentions.0"))
        state.update(ffn(make, enc))
        for n in range(2):
            state.update(norm(make, f"{enc}.norms.{n}"))
        dec = f"transformer.decoder.layers.{i}"
        state[f"{dec}.attentions.0.attn.in_proj_weight"] = make(3 * D, D)
        state[f"{dec}.attentions.0.attn.in_proj_bias"] = make(3 * D)
        state.update(linear(make, f"{dec}.attentions.0.attn.out_proj", D, D))
        state.update(msda(make, f"{dec}.attentions.1"))
        state.update(ffn(make, dec))
        for n in range(3):
            state.update(norm(make, f"{dec}.norms.{n}"))
    first = _head(make, 0)
    state.update(first)
    for k in range(1, LAYERS + int(two_stage)):
        if refine:  # deep copies, trained apart
            state.update(_head(make, k))
        else:  # one module listed six times: equal values under six names
            state.update({n.replace(".0.", f".{k}.", 1): v.clone() for n, v in first.items()})
    # Refinement: transformer.decoder.bbox_embed is the detector's ModuleList (two-stage: and
    # transformer.decoder.class_embed), so state_dict() lists those heads twice.
    heads = [k for k in list(state) if k.startswith(("class_embed.", "bbox_embed."))]
    for name in heads:
        if (refine and name.startswith("bbox_embed.")) or two_stage:
            state[f"transformer.decoder.{name}"] = state[name].clone()
    return state


def build_model(config: str) -> torch.nn.Module:
    return instantiate(LazyConfig.load(str(CONFIGS / config)).model)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loads_strictly_into_our_model(variant: str) -> None:
    config, fmt = VARIANTS[variant]
    state = detrex_deformable_state(Filler(), variant)
    assert detect_format(state) == fmt
    converted = convert(state, fmt)
    # The mmdet recipe's neck has no convolution biases: exactly those keys are left over.
    assert set(converted) - set(build_model(config).state_dict()) == NECK_CONV_BIASES
    model = build_model(WEIGHT_CONFIGS[variant])  # model.neck.bias=True, as the original
    result = model.load_state_dict(converted, strict=True)  # also checks every shape
    assert not result.missing_keys and not result.unexpected_keys

    aliases = {"plain": 5 * (2 + 6), "refine": 6 * 6, "two_stage": 7 * (2 + 6)}[variant]
    assert len(state) - len(converted) == aliases
    pairs = {
        "backbone.layer4.0.downsample.1.running_var": "backbone.res5.0.shortcut.norm.running_var",
        "neck.extra_convs.0.norm.bias": "neck.extra_convs.0.norm.bias",
        "level_embeds": "transformer.level_embeds",
        "encoder.layers.2.self_attn.sampling_offsets.weight": (
            "transformer.encoder.layers.2.attentions.0.sampling_offsets.weight"
        ),
        "encoder.layers.4.norm2.bias": "transformer.encoder.layers.4.norms.1.bias",
        "decoder.layers.1.self_attn.in_proj_weight": (
            "transformer.decoder.layers.1.attentions.0.attn.in_proj_weight"
        ),
        "decoder.layers.3.cross_attn.value_proj.bias": (
            "transformer.decoder.layers.3.attentions.1.value_proj.bias"
        ),
        "decoder.layers.5.norm1.weight": "transformer.decoder.layers.5.norms.0.weight",
        "decoder.layers.0.ffn.linear2.weight": (
            "transformer.decoder.layers.0.ffns.0.layers.1.weight"
        ),
    }
    if variant == "plain":
        pairs["class_embed.weight"] = "class_embed.0.weight"
        pairs["bbox_embed.layers.2.bias"] = "bbox_embed.0.layers.2.bias"
    else:
        pairs["class_embed.5.weight"] = "class_embed.5.weight"
        pairs["bbox_embed.3.layers.1.weight"] = "bbox_embed.3.layers.1.weight"
    if variant == "two_stage":
        pairs["proposals.pos_trans_norm.weight"] = "transformer.pos_trans_norm.weight"
        pairs["bbox_embed.6.layers.0.bias"] = "bbox_embed.6.layers.0.bias"
    else:
        pairs["query_embedding.weight"] = "query_embedding.weight"
        pairs["reference_points.weight"] = "transformer.reference_points.weight"
    for ours, theirs in pairs.items():
        assert converted[ours] is state[theirs], ours
    norm3 = state["transformer.decoder.layers.2.norms.2.bias"]
    assert torch.equal(model.decoder.layers[2].norm3.bias, norm3)


@pytest.mark.parametrize(
    ("variant", "key"),
    [
        ("plain", "bbox_embed.3.layers.1.weight"),  # a "shared" head copy that differs
        ("plain", "class_embed.5.bias"),
        ("refine", "transformer.decoder.bbox_embed.2.layers.0.weight"),
        ("two_stage", "transformer.decoder.class_embed.6.bias"),
    ],
)
def test_duplicate_that_differs_is_named(variant: str, key: str) -> None:
    state = detrex_deformable_state(Filler(small=True), variant)
    state[key] = state[key] + 1
    with pytest.raises(ConversionError, match="should equal") as info:
        convert(state, VARIANTS[variant][1])
    assert info.value.key == key


def test_refinement_checkpoint_is_refused_by_the_shared_table() -> None:
    state = detrex_deformable_state(Filler(small=True), "refine")
    with pytest.raises(ConversionError) as info:
        convert_detrex_deformable_detr(state)
    # Whichever comes first: a head that differs from head 0, or the decoder's list of heads.
    assert info.value.key.startswith(("class_embed.", "transformer.decoder.bbox_embed."))
    decoder_first = dict(sorted(state.items(), key=lambda item: not item[0].startswith("trans")))
    with pytest.raises(ConversionError, match="no conversion rule") as info:
        convert_detrex_deformable_detr(decoder_first)
    assert info.value.key.startswith("transformer.decoder.bbox_embed.")


@pytest.mark.parametrize("variant", ["plain", "two_stage"])
@pytest.mark.parametrize(
    "bad_key",
    [
        "transformer.encoder.layers.0.norms.2.weight",  # encoder layers have 2 norms
        "transformer.decoder.layers.1.attentions.2.value_proj.weight",
        "transformer.encoder.post_norm_layer.weight",  # post_norm=False in Deformable-DETR
        "transformer.decoder.layers.0.ffns.0.layers.0.1.weight",  # ReLU, not DAB-DETR's PReLU
        "bbox_embed.0.layers.3.weight",  # the box MLP has 3 Linears
        "neck.convs.0.gn.weight",  # mmdet's name for the GroupNorm
        "anchor_box_embed.weight",  # DAB-DETR's
        "backbone.res6.0.conv1.weight",
    ],
)
def test_unknown_key_is_named(variant: str, bad_key: str) -> None:
    state = detrex_deformable_state(Filler(small=True), variant)
    state[bad_key] = torch.zeros(1)
    with pytest.raises(ConversionError, match="no conversion rule") as info:
        convert(state, VARIANTS[variant][1])
    assert info.value.key == bad_key and f"'{bad_key}'" in str(info.value)


def test_detect_format_tells_detrex_dab_from_deformable() -> None:
    # A slice of detrex DAB-DETR's keys: transformer.* without level_embeds,
    # and a transformer.decoder.bbox_embed that is not a per-layer list.
    dab = {
        "backbone.stem.conv1.weight": torch.zeros(1),
        "input_proj.weight": torch.zeros(1),
        "anchor_box_embed.weight": torch.zeros(1),
        "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight": torch.zeros(1),
        "transformer.decoder.layers.0.attentions.1.query_pos_sine_proj.weight": torch.zeros(1),
        "transformer.decoder.bbox_embed.layers.0.weight": torch.zeros(1),
    }
    assert detect_format(dab) == "detrex_dab_detr"
    for variant, (_, fmt) in VARIANTS.items():
        assert detect_format(detrex_deformable_state(Filler(small=True), variant)) == fmt
    assert {"detrex_deformable_detr", "detrex_deformable_detr_refine"} <= set(CONVERTERS)


def test_tool_auto_converts_detrex_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "converted_deformable_detr_two_stage_50ep.pth", tmp_path / "out.pth"
    torch.save({"model": detrex_deformable_state(Filler(small=True), "two_stage")}, src)
    assert convert_checkpoint.main(["--format", "auto", str(src), str(dst)]) == 0
    data = torch.load(dst, weights_only=True)
    assert data["__converted_from__"] == "detrex_deformable_detr_refine"
    assert "proposals.enc_output.weight" in data["model"]
    assert "transformer.decoder.class_embed.6.weight" not in data["model"]
