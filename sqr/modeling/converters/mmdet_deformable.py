"""mmdet Deformable-DETR / SQR-Deformable-DETR checkpoints, and torchvision ResNet weights.

mmdet (2.12, the SQR release, Fangyi-Chen/SQR at b576a6e; ``{'meta', 'state_dict'}``) nests the
transformer in the head (``bbox_head.transformer.``) and names blocks by container
(``attentions.N``, ``ffns.0``, ``norms.N``); our :class:`~sqr.modeling.detectors.DeformableDETR`
names modules by role. mmdet's ResNet already uses torchvision's names. The tables below,
applied in order by :func:`~sqr.modeling.converters.detectron2.apply_rules`, are the complete
maps (``{i}`` a layer index, ``X`` the rest of the key; ``H`` = ``bbox_head.``,
``T`` = ``bbox_head.transformer.``)::

    backbone.<torchvision ResNet name>                -> unchanged
    backbone.*.num_batches_tracked                    -> dropped (FrozenBatchNorm2d)
    neck.{convs,extra_convs}.{i}.conv.weight          -> unchanged
    neck.{convs,extra_convs}.{i}.gn.X                 -> neck.{...}.{i}.norm.X
    H query_embedding.weight                          -> query_embedding.weight
    T level_embeds                                    -> level_embeds
    T reference_points.X                              -> reference_points.X
    T {enc_output,enc_output_norm,pos_trans,pos_trans_norm}.X  (two-stage)
                                                      -> proposals.{same}.X
    T encoder.layers.{i}.attentions.0.Y.X             -> encoder.layers.{i}.self_attn.Y.X
    T decoder.layers.{i}.attentions.0.attn.X          -> decoder.layers.{i}.self_attn.X
    T decoder.layers.{i}.attentions.1.Y.X             -> decoder.layers.{i}.cross_attn.Y.X
    T {en,de}coder.layers.{i}.ffns.0.layers.0.0.X     -> ....ffn.linear1.X
    T {en,de}coder.layers.{i}.ffns.0.layers.1.X       -> ....ffn.linear2.X
    T {en,de}coder.layers.{i}.norms.{n}.X             -> ....norm{n+1}.X
    shared heads ("mmdet_deformable_detr"):
    H cls_branches.0.X                                -> class_embed.X
    H reg_branches.0.{0,2,4}.X                        -> bbox_embed.layers.{0,1,2}.X
    H {cls,reg}_branches.{k>0}.*                      -> dropped after checking equal to copy 0
    per-layer heads ("mmdet_deformable_detr_refine", box refinement / two-stage):
    H cls_branches.{k}.X                              -> class_embed.{k}.X
    H reg_branches.{k}.{0,2,4}.X                      -> bbox_embed.{k}.layers.{0,1,2}.X

with Y one of ``sampling_offsets, attention_weights, value_proj, output_proj``. Without box
refinement mmdet's ``cls_branches``/``reg_branches`` hold one module ``num_layers`` times, so
the checkpoint has that many identical copies; they collapse to our single shared head, and a
copy that differs (a refinement checkpoint given the shared-head format) raises
:class:`ConversionError` instead of being dropped silently.

torchvision ResNet weights (``conv1``, ``bn1``, ``layer1..4``, ``fc``; with or without a
``backbone.`` prefix) map to the detector's ``backbone.`` names, dropping the classifier and
``num_batches_tracked``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .detectron2 import Rule, alias, apply_rules, drop, numbered_norm_rules, rename

__all__ = [
    "MMDET_DEFORMABLE_DETR_REFINE_RULES",
    "MMDET_DEFORMABLE_DETR_RULES",
    "TORCHVISION_RESNET_RULES",
    "convert_mmdet_deformable_detr",
    "convert_mmdet_deformable_detr_refine",
    "convert_torchvision_resnet",
    "mmdet_deformable_format",
    "torchvision_resnet_rules",
]

_WB = r"(weight|bias)"
_NORM_FIELDS = r"(weight|bias|running_mean|running_var)"
_H = r"bbox_head\."
_T = r"bbox_head\.transformer\."
_MSDA = r"(sampling_offsets|attention_weights|value_proj|output_proj)"
# mmdet's regression branch is Linear-ReLU-Linear-ReLU-Linear: Linears at 0, 2, 4.
_REG_LINEARS = {"0": "0", "2": "1", "4": "2"}


def torchvision_resnet_rules(source_prefix: str, target_prefix: str) -> list[Rule]:
    """torchvision (and mmdet) ResNet names -> ours, which are the same names.

    Args:
        source_prefix: regex before the names (no capturing groups), e.g. ``r"(?:backbone\\.)?"``.
        target_prefix: literal text put before them, e.g. ``"backbone."``.

    Returns:
        The stem and ``layer1..4`` renames, and drops of ``num_batches_tracked`` and ``fc``.
    """
    src, dst = source_prefix, target_prefix.replace("\\", "\\\\")
    block = rf"{src}(layer[1-4]\.\d+)"
    return [
        rename(rf"{src}conv1\.weight", f"{dst}conv1.weight"),
        rename(rf"{src}bn1\.{_NORM_FIELDS}", rf"{dst}bn1.\1"),
        rename(rf"{block}\.conv([123])\.weight", rf"{dst}\1.conv\2.weight"),
        rename(rf"{block}\.bn([123])\.{_NORM_FIELDS}", rf"{dst}\1.bn\2.\3"),
        rename(rf"{block}\.downsample\.0\.weight", rf"{dst}\1.downsample.0.weight"),
        rename(rf"{block}\.downsample\.1\.{_NORM_FIELDS}", rf"{dst}\1.downsample.1.\2"),
        drop(
            rf"{src}(?:bn1|layer[1-4]\.\d+\.(?:bn[123]|downsample\.1))\.num_batches_tracked",
            "FrozenBatchNorm2d has no num_batches_tracked buffer",
        ),
        drop(rf"{src}fc\.{_WB}", "ImageNet classifier"),
    ]


def deformable_transformer_rules(prefix: str) -> list[Rule]:
    """The transformer's layers, named alike by mmdet 2.12 and detrex (mmcv's
    ``BaseTransformerLayer`` lists): level embeddings, the reference-point projection, MSDA,
    the decoder's self-attention, the FFNs (``Sequential(Linear, ReLU, Dropout), Linear,
    Dropout``; ReLU has no weights) and the numbered norms.

    Args:
        prefix: regex of the transformer's prefix (``bbox_head\\.transformer\\.`` in mmdet,
            ``transformer\\.`` in detrex).
    """
    mha = r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
    rules = [
        rename(rf"{prefix}level_embeds", "level_embeds"),
        rename(rf"{prefix}reference_points\.{_WB}", r"reference_points.\1"),
        rename(
            rf"{prefix}encoder\.layers\.(\d+)\.attentions\.0\.{_MSDA}\.{_WB}",
            r"encoder.layers.\1.self_attn.\2.\3",
        ),
        rename(
            rf"{prefix}decoder\.layers\.(\d+)\.attentions\.0\.attn\.{mha}",
            r"decoder.layers.\1.self_attn.\2",
        ),
        rename(
            rf"{prefix}decoder\.layers\.(\d+)\.attentions\.1\.{_MSDA}\.{_WB}",
            r"decoder.layers.\1.cross_attn.\2.\3",
        ),
        rename(
            rf"{prefix}(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.{_WB}",
            r"\1.layers.\2.ffn.linear1.\3",
        ),
        rename(
            rf"{prefix}(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.1\.{_WB}",
            r"\1.layers.\2.ffn.linear2.\3",
        ),
    ]
    return rules + numbered_norm_rules(prefix, {"encoder": 2, "decoder": 3})


def _transformer_rules() -> list[Rule]:
    """Everything but the class and box heads."""
    rules = torchvision_resnet_rules(r"backbone\.", "backbone.")
    rules += [
        rename(r"neck\.(convs|extra_convs)\.(\d+)\.conv\.weight", r"neck.\1.\2.conv.weight"),
        rename(rf"neck\.(convs|extra_convs)\.(\d+)\.gn\.{_WB}", r"neck.\1.\2.norm.\3"),
        rename(rf"{_H}query_embedding\.weight", "query_embedding.weight"),
        rename(
            rf"{_T}(enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.{_WB}",
            r"proposals.\1.\2",
        ),
    ]
    return rules + deformable_transformer_rules(_T)


def _shared_head_rules() -> list[Rule]:
    why = "mmdet repeats the one shared head once per decoder layer"
    rules = [rename(rf"{_H}cls_branches\.0\.{_WB}", r"class_embed.\1")]
    rules += [
        rename(rf"{_H}reg_branches\.0\.{src}\.{_WB}", rf"bbox_embed.layers.{dst}.\1")
        for src, dst in _REG_LINEARS.items()
    ]
    rules += [
        alias(rf"{_H}cls_branches\.[1-9]\d*\.{_WB}", r"bbox_head.cls_branches.0.\1", why),
        alias(
            rf"{_H}reg_branches\.[1-9]\d*\.([024])\.{_WB}", r"bbox_head.reg_branches.0.\1.\2", why
        ),
    ]
    return rules


def _per_layer_head_rules() -> list[Rule]:
    rules = [rename(rf"{_H}cls_branches\.(\d+)\.{_WB}", r"class_embed.\1.\2")]
    rules += [
        rename(rf"{_H}reg_branches\.(\d+)\.{src}\.{_WB}", rf"bbox_embed.\1.layers.{dst}.\2")
        for src, dst in _REG_LINEARS.items()
    ]
    return rules


#: Shared heads (the SQR release: no box refinement); see the module docstring.
MMDET_DEFORMABLE_DETR_RULES: tuple[Rule, ...] = tuple(_transformer_rules() + _shared_head_rules())
#: Per-layer heads (box refinement, two-stage).
MMDET_DEFORMABLE_DETR_REFINE_RULES: tuple[Rule, ...] = tuple(
    _transformer_rules() + _per_layer_head_rules()
)
#: torchvision ResNet weights, with or without ``backbone.``, into a detector's backbone.
TORCHVISION_RESNET_RULES: tuple[Rule, ...] = tuple(
    torchvision_resnet_rules(r"(?:backbone\.)?", "backbone.")
)


def convert_mmdet_deformable_detr(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an mmdet (SQR-)Deformable-DETR ``state_dict`` with shared heads to our names.

    Args:
        state: the checkpoint's ``"state_dict"``, ``{mmdet name: tensor}``.

    Returns:
        ``{sqr name: tensor}`` for a :class:`~sqr.modeling.detectors.DeformableDETR` with
        ``with_box_refine=False``.

    Raises:
        ConversionError: for a key outside the table, or a head copy that differs from copy 0
            (the message names the key).
    """
    return apply_rules(state, MMDET_DEFORMABLE_DETR_RULES, "mmdet_deformable_detr")


def convert_mmdet_deformable_detr_refine(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an mmdet Deformable-DETR ``state_dict`` with per-layer heads (box refinement,
    two-stage) to our names; otherwise as :func:`convert_mmdet_deformable_detr`."""
    return apply_rules(state, MMDET_DEFORMABLE_DETR_REFINE_RULES, "mmdet_deformable_detr_refine")


def convert_torchvision_resnet(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert torchvision ResNet weights (e.g. ``resnet50-0676ba61.pth``, mmdet's
    ``torchvision://resnet50``) to a detector's ``backbone.`` names."""
    return apply_rules(state, TORCHVISION_RESNET_RULES, "torchvision_resnet")


def mmdet_deformable_format(state: Mapping[str, Any]) -> str:
    """``"mmdet_deformable_detr"`` when every class-head copy equals copy 0 (shared heads), else
    ``"mmdet_deformable_detr_refine"``.

    mmdet saves ``num_layers`` head entries in both cases; only the values tell them apart. A
    freshly initialised refinement model also has equal copies (they start as deep copies),
    and converts correctly either way.
    """
    first = state.get("bbox_head.cls_branches.0.weight")
    if first is None:
        return "mmdet_deformable_detr_refine"
    first = torch.as_tensor(first)
    copies = [
        torch.as_tensor(value)
        for key, value in state.items()
        if key.startswith("bbox_head.cls_branches.") and key.endswith(".weight")
    ]
    shared = all(c.shape == first.shape and torch.equal(c, first) for c in copies)
    return "mmdet_deformable_detr" if shared else "mmdet_deformable_detr_refine"
