"""RT-DETRv2 weights (lyuwenyu/RT-DETR, ``rtdetrv2_pytorch`` at 068dfde) -> sqr names.

Two formats: ``rtdetrv2``, a whole detector (the ``model`` and ``ema.module`` state_dicts of
the published ``.pth`` files: ``backbone.*``, ``encoder.*``, ``decoder.*``) converted to
:class:`~sqr.modeling.detectors.RTDETRv2`, and ``rtdetr_presnet``, the bare ImageNet PResNet
files its recipes start from (``ResNet*_vd_*pretrained_from_paddle.pth``), converted under
``backbone.``. The official names and ours, with ``CN`` = ``conv.weight`` or ``norm.X``, ``X`` in
``weight, bias, running_mean, running_var, num_batches_tracked`` and ``WB`` = ``weight`` or
``bias``::

    PResNet (backbone.)
    conv1.conv1_{n}.CN                                  -> stem.conv{n}.CN
    res_layers.{i}.blocks.{j}.branch2{a,b,c}.CN         -> layer{i+1}.{j}.conv{1,2,3}.CN
    res_layers.0.blocks.0.short.CN                      -> layer1.0.shortcut.CN
    res_layers.{i>0}.blocks.0.short.conv.CN             -> layer{i+1}.0.shortcut.CN (after pool)

    HybridEncoder (encoder.)
    input_proj.{l}.CN                                   -> input_proj.{l}.CN
    encoder.{e}.layers.{k}.{self_attn.*,linear*,norm*}  -> aifi.{e}.{k}.{same}
    lateral_convs.{l}.CN, downsample_convs.{l}.CN       -> unchanged
    P.conv1.CN                                          -> P.main_conv.CN
    P.conv2.CN                                          -> P.short_conv.CN
    P.conv3.CN                                          -> P.out_conv.CN
    P.bottlenecks.{b}.conv1.CN                          -> P.blocks.{b}.conv3x3.CN
    P.bottlenecks.{b}.conv2.CN                          -> P.blocks.{b}.conv1x1.CN

    RTDETRTransformerv2 (decoder.)
    input_proj.{l}.CN                                   -> input_proj.{l}.CN (top level)
    decoder.layers.{i}.{self_attn,norm1,2,3}.*          -> decoder.layers.{i}.{same}
    decoder.layers.{i}.cross_attn.{Y}.WB                -> decoder.layers.{i}.cross_attn.{Y}.WB
    decoder.layers.{i}.linear{1,2}.WB                   -> decoder.layers.{i}.ffn.linear{1,2}.WB
    decoder.layers.{i}.cross_attn.num_points_scale      -> dropped (1 / points, recomputed)
    query_pos_head.layers.{k}.WB                        -> decoder.query_pos_head.layers.{k}.WB
    enc_output.proj.WB, enc_output.norm.WB              -> query_selection.enc_output{,_norm}.WB
    enc_score_head.WB, enc_bbox_head.layers.{k}.WB      -> query_selection.{class,box}_head.*
    tgt_embed.weight                                    -> query_selection.content.weight
    dec_score_head.{i}.WB                               -> class_embed.{i}.WB
    dec_bbox_head.{i}.layers.{k}.WB                     -> bbox_embed.{i}.layers.{k}.WB
    denoising_class_embed.weight [K + 1, C]             -> denoising.label_enc.weight [K, C]
    anchors, valid_mask                                 -> dropped (built for each input size)

with ``P`` = ``fpn_blocks.{l}`` or ``pan_blocks.{l}`` (CSPRepLayers and their RepVGG blocks) and
``Y`` one of ``sampling_offsets, attention_weights, value_proj, output_proj`` (same layout: the
offsets are ``[heads, points of every level, 2]``). The denoising embedding's last row is its
``padding_idx``, the content of unfilled denoising slots: it never trains, stays zero, and our
unfilled slots are zero without it; the converter checks it is zero and drops it.

``num_batches_tracked`` is renamed like the rest: the official FrozenBatchNorm2d has none, its
BatchNorm2d has one, and so do ours. A RepVGG block fused for deployment
(``bottlenecks.{b}.conv.*``) has no rule: it is not a training checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .detectron2 import ConversionError, Rule, apply_rules, drop, rename

__all__ = [
    "convert_rtdetr_presnet",
    "convert_rtdetrv2",
    "RTDETRV2_RULES",
    "is_rtdetr_presnet",
    "is_rtdetrv2",
    "rtdetr_hybrid_encoder_rules",
    "rtdetr_presnet_rules",
    "rtdetrv2_decoder_rules",
]

_NORM = r"norm\.(?:weight|bias|running_mean|running_var|num_batches_tracked)"
# A ConvNormAct's tensors, captured as group 1 of every rule that uses it.
_CN = rf"(conv\.weight|{_NORM})"
_WB = r"(weight|bias)"
_DENOISING = "decoder.denoising_class_embed.weight"


def _template(prefix: str) -> str:
    # Target prefixes are literal text inside an re template, where only "\" is special.
    return prefix.replace("\\", "\\\\")


def rtdetr_presnet_rules(source_prefix: str, target_prefix: str) -> list[Rule]:
    """The official PResNet -> :class:`~sqr.modeling.backbone.PResNet` table.

    Args:
        source_prefix: Regex matched before the official names, e.g. ``r"backbone\\."``; it
            must not contain capturing groups.
        target_prefix: Literal text put before our names, e.g. ``"backbone."``.

    Returns:
        The rules of the module docstring, for depths 18, 34, 50 and 101.
    """
    src, dst = source_prefix, _template(target_prefix)
    rules = [rename(rf"{src}conv1\.conv1_([123])\.{_CN}", rf"{dst}stem.conv\1.\2")]
    for i in range(4):
        stage, layer = rf"{src}res_layers\.{i}\.blocks", f"{dst}layer{i + 1}"
        for branch, conv in zip("abc", ("conv1", "conv2", "conv3"), strict=True):
            rules.append(
                rename(rf"{stage}\.(\d+)\.branch2{branch}\.{_CN}", rf"{layer}.\1.{conv}.\2")
            )
        # Stage 0 has no stride, so no pool: the official shortcut is a bare ConvNormLayer there
        # and ``Sequential(pool, conv=ConvNormLayer)`` in the strided stages.
        pooled = r"conv\." if i > 0 else ""
        rules.append(rename(rf"{stage}\.0\.short\.{pooled}{_CN}", rf"{layer}.0.shortcut.\1"))
    return rules


def rtdetr_hybrid_encoder_rules(source_prefix: str, target_prefix: str) -> list[Rule]:
    """The official HybridEncoder ("v2" input projections) -> ours table.

    Args:
        source_prefix: Regex matched before the official names, e.g. ``r"encoder\\."``; it must
            not contain capturing groups.
        target_prefix: Literal text put before our names, e.g. ``"encoder."``.

    Returns:
        The rules of the module docstring.
    """
    src, dst = source_prefix, _template(target_prefix)
    attn = r"self_attn\.(?:in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
    layer_tensors = rf"({attn}|(?:linear[12]|norm[12])\.(?:weight|bias))"
    csp = rf"{src}((?:fpn|pan)_blocks\.\d+)"
    return [
        rename(
            rf"{src}((?:input_proj|lateral_convs|downsample_convs)\.\d+)\.{_CN}", rf"{dst}\1.\2"
        ),
        rename(rf"{src}encoder\.(\d+)\.layers\.(\d+)\.{layer_tensors}", rf"{dst}aifi.\1.\2.\3"),
        rename(rf"{csp}\.conv1\.{_CN}", rf"{dst}\1.main_conv.\2"),
        rename(rf"{csp}\.conv2\.{_CN}", rf"{dst}\1.short_conv.\2"),
        rename(rf"{csp}\.conv3\.{_CN}", rf"{dst}\1.out_conv.\2"),
        rename(rf"{csp}\.bottlenecks\.(\d+)\.conv1\.{_CN}", rf"{dst}\1.blocks.\2.conv3x3.\3"),
        rename(rf"{csp}\.bottlenecks\.(\d+)\.conv2\.{_CN}", rf"{dst}\1.blocks.\2.conv1x1.\3"),
    ]


def rtdetrv2_decoder_rules() -> list[Rule]:
    """The official ``RTDETRTransformerv2`` (under ``decoder.``) -> the detector's modules.

    Returns:
        The rules of the module docstring; the denoising embedding is renamed here and cut to
        its classes by :func:`convert_rtdetrv2`.
    """
    src = r"decoder\."
    layer = rf"{src}decoder\.layers\.(\d+)\."
    attn = r"self_attn\.(?:in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
    cross = r"cross_attn\.(?:sampling_offsets|attention_weights|value_proj|output_proj)"
    return [
        rename(rf"{src}input_proj\.(\d+)\.{_CN}", r"input_proj.\1.\2"),
        rename(rf"{layer}({attn}|norm[123]\.{_WB}|{cross}\.{_WB})", r"decoder.layers.\1.\2"),
        rename(rf"{layer}(linear[12])\.{_WB}", r"decoder.layers.\1.ffn.\2.\3"),
        drop(rf"{layer}cross_attn\.num_points_scale", "1 / points per level, recomputed"),
        rename(
            rf"{src}query_pos_head\.layers\.(\d+)\.{_WB}", r"decoder.query_pos_head.layers.\1.\2"
        ),
        rename(rf"{src}enc_output\.proj\.{_WB}", r"query_selection.enc_output.\1"),
        rename(rf"{src}enc_output\.norm\.{_WB}", r"query_selection.enc_output_norm.\1"),
        rename(rf"{src}enc_score_head\.{_WB}", r"query_selection.class_head.\1"),
        rename(
            rf"{src}enc_bbox_head\.layers\.(\d+)\.{_WB}", r"query_selection.box_head.layers.\1.\2"
        ),
        rename(rf"{src}tgt_embed\.weight", "query_selection.content.weight"),
        rename(rf"{src}dec_score_head\.(\d+)\.{_WB}", r"class_embed.\1.\2"),
        rename(rf"{src}dec_bbox_head\.(\d+)\.layers\.(\d+)\.{_WB}", r"bbox_embed.\1.layers.\2.\3"),
        rename(rf"{src}denoising_class_embed\.weight", "denoising.label_enc.weight"),
        drop(rf"{src}(?:anchors|valid_mask)", "the eval-size anchors, built for each input"),
    ]


#: The whole-detector table; see the module docstring.
RTDETRV2_RULES: tuple[Rule, ...] = (
    *rtdetr_presnet_rules(r"backbone\.", "backbone."),
    *rtdetr_hybrid_encoder_rules(r"encoder\.", "encoder."),
    *rtdetrv2_decoder_rules(),
)


def convert_rtdetr_presnet(state: Mapping[str, Any], prefix: str = "backbone.") -> dict[str, Any]:
    """Rename a bare official PResNet state_dict (the ImageNet ``ResNet*_vd_*.pth`` files its
    backbones start from) to :class:`~sqr.modeling.backbone.PResNet` names.

    Args:
        state: ``{official name: tensor}``; not modified.
        prefix: put before every output name; ``""`` to load into a bare ``PResNet``.

    Returns:
        ``{our name: tensor}``, same tensor objects.

    Raises:
        ConversionError: a key that is not a PResNet tensor.
    """
    return apply_rules(state, rtdetr_presnet_rules("", prefix), "rtdetr_presnet")


def convert_rtdetrv2(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an official RT-DETRv2 model state_dict (a published ``.pth`` file's ``model``
    or ``ema.module``) to :class:`~sqr.modeling.detectors.RTDETRv2` names.

    Args:
        state: ``{official name: tensor}``; not modified.

    Returns:
        ``{our name: tensor}``: the same tensor objects, but for the denoising embedding, whose
        padding row is cut off.

    Raises:
        ConversionError: a key outside the table, or a denoising padding row that is not zero.
    """
    out = apply_rules(state, RTDETRV2_RULES, "rtdetrv2")
    if _DENOISING in state:
        embed = torch.as_tensor(state[_DENOISING])
        if embed.ndim != 2 or bool(embed[-1].count_nonzero()):
            raise ConversionError(
                _DENOISING,
                f"rtdetrv2: '{_DENOISING}' {tuple(embed.shape)} should end with its zero "
                "padding row (padding_idx = num_classes); the checkpoint is not RT-DETRv2's",
            )
        out["denoising.label_enc.weight"] = embed[:-1]
    return out


def is_rtdetrv2(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has the official RT-DETRv2 detector's names (its decoder heads)."""
    return any(key.startswith("decoder.dec_score_head.") for key in state)


def is_rtdetr_presnet(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` is a bare official PResNet (its stem is ``conv1.conv1_1``)."""
    return any(key.startswith("conv1.conv1_1.") for key in state)
