"""detrex Deformable-DETR checkpoints -> :class:`~sqr.modeling.detectors.DeformableDETR` names.

This covers detrex's own Deformable-DETR models (``projects/deformable_detr``) and its
conversions of the original fundamentalvision/Deformable-DETR weights
(``converted_deformable_detr_*.pth``, ``{'model': ...}``), which have the same names. detrex
nests the transformer under ``transformer.`` and names blocks by container (``attentions.N``,
``ffns.0``, ``norms.N``, numbered in operation order); ours names modules by role and keeps them
at the top level. The tables below, applied in order by
:func:`~sqr.modeling.converters.detectron2.apply_rules`, are the complete maps (``{i}`` a layer
index, ``{k}`` a head index, ``X`` the rest of the key, ``T`` = ``transformer.``)::

    backbone.<detectron2 ResNet name>                 -> backbone.<torchvision name>
    neck.{convs,extra_convs}.{i}.{conv,norm}.X        -> unchanged (see the neck note below)
    query_embedding.weight                            -> unchanged
    T level_embeds                                    -> level_embeds
    T reference_points.X                              -> reference_points.X
    T encoder.layers.{i}.attentions.0.Y.X             -> encoder.layers.{i}.self_attn.Y.X
    T decoder.layers.{i}.attentions.0.attn.X          -> decoder.layers.{i}.self_attn.X
    T decoder.layers.{i}.attentions.1.Y.X             -> decoder.layers.{i}.cross_attn.Y.X
    T {en,de}coder.layers.{i}.ffns.0.layers.0.0.X     -> ....ffn.linear1.X
    T {en,de}coder.layers.{i}.ffns.0.layers.1.X       -> ....ffn.linear2.X
    T {en,de}coder.layers.{i}.norms.{n}.X             -> ....norm{n+1}.X
    shared heads ("detrex_deformable_detr", no box refinement):
    class_embed.0.X                                   -> class_embed.X
    bbox_embed.0.layers.{0,1,2}.X                     -> bbox_embed.layers.{0,1,2}.X
    {class,bbox}_embed.{k>0}.*                        -> dropped after checking equal to copy 0
    per-layer heads ("detrex_deformable_detr_refine", box refinement and two-stage):
    class_embed.{k}.X                                 -> class_embed.{k}.X
    bbox_embed.{k}.layers.{0,1,2}.X                   -> bbox_embed.{k}.layers.{0,1,2}.X
    T decoder.{class,bbox}_embed.{k}.*                -> dropped after checking equal to the head
    T {enc_output,enc_output_norm,pos_trans,pos_trans_norm}.X  (two-stage)
                                                      -> proposals.{same}.X

with Y one of ``sampling_offsets, attention_weights, value_proj, output_proj``. Without box
refinement detrex's ``class_embed``/``bbox_embed`` are ``ModuleList``s holding one module six
times, so the checkpoint has six equal copies; they collapse onto our single shared head. With
refinement the decoder holds the very same ``ModuleList`` of box heads (and, in two-stage, of
class heads) as ``transformer.decoder.bbox_embed`` / ``.class_embed``, so those keys duplicate
the top-level heads. Two-stage adds a seventh head, the encoder proposals' (our last head too).

Neck note: detrex's ``ChannelMapper`` (default ``bias=True``) and the original model's
``input_proj`` have a bias on every convolution before its GroupNorm; the mmdet model that
:class:`~sqr.modeling.neck.ChannelMapper` reproduces has none. A per-channel bias before
GroupNorm changes each group's mean and variance differently per channel, so it cannot be
folded away: ``neck.*.conv.bias`` keep their names here and load only into a neck whose
convolutions have biases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .detectron2 import Rule, alias, apply_rules, rename, resnet_rules
from .mmdet_deformable import deformable_transformer_rules

__all__ = [
    "DETREX_DEFORMABLE_DETR_REFINE_RULES",
    "DETREX_DEFORMABLE_DETR_RULES",
    "convert_detrex_deformable_detr",
    "convert_detrex_deformable_detr_refine",
    "detrex_deformable_format",
    "is_detrex_deformable",
]

_WB = r"(weight|bias)"
_T = r"transformer\."


def _transformer_rules() -> list[Rule]:
    """Everything but the class and box heads and the two-stage proposal layers."""
    rules = resnet_rules(r"backbone\.", "backbone.")
    rules += [
        rename(rf"neck\.(convs|extra_convs)\.(\d+)\.conv\.{_WB}", r"neck.\1.\2.conv.\3"),
        rename(rf"neck\.(convs|extra_convs)\.(\d+)\.norm\.{_WB}", r"neck.\1.\2.norm.\3"),
        rename(r"query_embedding\.weight", "query_embedding.weight"),
    ]
    return rules + deformable_transformer_rules(_T)


def _shared_head_rules() -> list[Rule]:
    why = "detrex repeats the one shared head once per decoder layer"
    return [
        rename(rf"class_embed\.0\.{_WB}", r"class_embed.\1"),
        rename(rf"bbox_embed\.0\.layers\.([012])\.{_WB}", r"bbox_embed.layers.\1.\2"),
        alias(rf"class_embed\.[1-9]\d*\.{_WB}", r"class_embed.0.\1", why),
        alias(rf"bbox_embed\.[1-9]\d*\.layers\.([012])\.{_WB}", r"bbox_embed.0.layers.\1.\2", why),
    ]


def _per_layer_head_rules() -> list[Rule]:
    why = "the decoder holds the detector's own head list for refinement (and two-stage)"
    return [
        rename(rf"class_embed\.(\d+)\.{_WB}", r"class_embed.\1.\2"),
        rename(rf"bbox_embed\.(\d+)\.layers\.([012])\.{_WB}", r"bbox_embed.\1.layers.\2.\3"),
        alias(rf"{_T}decoder\.class_embed\.(\d+)\.{_WB}", r"class_embed.\1.\2", why),
        alias(
            rf"{_T}decoder\.bbox_embed\.(\d+)\.layers\.([012])\.{_WB}",
            r"bbox_embed.\1.layers.\2.\3",
            why,
        ),
        rename(
            rf"{_T}(enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.{_WB}",
            r"proposals.\1.\2",
        ),
    ]


#: Shared heads (plain Deformable-DETR); see the module docstring.
DETREX_DEFORMABLE_DETR_RULES: tuple[Rule, ...] = tuple(_transformer_rules() + _shared_head_rules())
#: Per-layer heads (box refinement, two-stage).
DETREX_DEFORMABLE_DETR_REFINE_RULES: tuple[Rule, ...] = tuple(
    _transformer_rules() + _per_layer_head_rules()
)


def convert_detrex_deformable_detr(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a detrex Deformable-DETR ``state_dict`` with shared heads to our names.

    Args:
        state: the checkpoint's ``"model"`` entry, ``{detrex name: tensor}``.

    Returns:
        ``{sqr name: tensor}`` for a :class:`~sqr.modeling.detectors.DeformableDETR` with
        ``with_box_refine=False`` (and a neck with convolution biases; see the module docstring).

    Raises:
        ConversionError: for a key outside the table (e.g. a refinement checkpoint's
            ``transformer.decoder.bbox_embed.*``), or a head copy that differs from copy 0; the
            message names the key.
    """
    return apply_rules(state, DETREX_DEFORMABLE_DETR_RULES, "detrex_deformable_detr")


def convert_detrex_deformable_detr_refine(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a detrex Deformable-DETR ``state_dict`` with per-layer heads (box refinement,
    two-stage) to our names; otherwise as :func:`convert_detrex_deformable_detr`."""
    return apply_rules(state, DETREX_DEFORMABLE_DETR_REFINE_RULES, "detrex_deformable_detr_refine")


def is_detrex_deformable(state: Mapping[str, Any]) -> bool:
    """Whether detrex-style keys (``transformer.``) belong to Deformable-DETR rather than
    DAB-DETR: only the multi-scale model has ``transformer.level_embeds``."""
    return "transformer.level_embeds" in state


def detrex_deformable_format(state: Mapping[str, Any]) -> str:
    """``"detrex_deformable_detr_refine"`` when the decoder holds the box heads (box refinement,
    which two-stage needs in our model), else ``"detrex_deformable_detr"``.

    Unlike mmdet's, the key names tell the variants apart: only refinement makes the decoder
    hold the heads, which puts ``transformer.decoder.bbox_embed.*`` in the ``state_dict``.
    """
    refine = any(key.startswith("transformer.decoder.bbox_embed.") for key in state)
    return "detrex_deformable_detr_refine" if refine else "detrex_deformable_detr"
