"""detrex DINO checkpoints -> :class:`~sqr.modeling.detectors.DINO` names.

Covers detrex's DINO with a ResNet backbone (``projects/dino`` at e244e6c, e.g. the released
``dino_r50_4scale_12ep_49_2AP.pth``, ``{'model': ...}``). The transformer's layers are named as
in detrex's Deformable-DETR (see :mod:`.detrex_deformable`); DINO adds the query selection,
the decoder's reference-point head and final norm, and the denoising label embedding. The
complete map, applied in order by :func:`~sqr.modeling.converters.detectron2.apply_rules`
(``{i}`` a layer index, ``{k}`` a head index 0..6, ``X`` the rest of the key,
``T`` = ``transformer.``)::

    backbone.<detectron2 ResNet name>                 -> backbone.<torchvision name>
    neck.{convs,extra_convs}.{i}.{conv,norm}.X        -> unchanged (convolutions with bias)
    T level_embeds                                    -> level_embeds
    T encoder.layers.{i}.attentions.0.Y.X             -> encoder.layers.{i}.self_attn.Y.X
    T decoder.layers.{i}.attentions.0.attn.X          -> decoder.layers.{i}.self_attn.X
    T decoder.layers.{i}.attentions.1.Y.X             -> decoder.layers.{i}.cross_attn.Y.X
    T {en,de}coder.layers.{i}.ffns.0.layers.0.0.X     -> ....ffn.linear1.X
    T {en,de}coder.layers.{i}.ffns.0.layers.1.X       -> ....ffn.linear2.X
    T {en,de}coder.layers.{i}.norms.{n}.X             -> ....norm{n+1}.X
    T decoder.ref_point_head.layers.{0,1}.X           -> decoder.ref_point_head.layers.{0,1}.X
    T decoder.norm.X                                  -> decoder.norm.X
    T tgt_embed.weight                                -> query_selection.content.weight
    T {enc_output,enc_output_norm}.X                  -> query_selection.{same}.X
    class_embed.{k}.X                                 -> class_embed.{k}.X
    bbox_embed.{k}.layers.{0,1,2}.X                   -> bbox_embed.{k}.layers.{0,1,2}.X
    T decoder.{class,bbox}_embed.{k}.*                -> dropped after checking equal to the head
    label_enc.weight                                  -> denoising.label_enc.weight

with Y one of ``sampling_offsets, attention_weights, value_proj, output_proj``. detrex's
decoder holds the detector's own lists of heads (``transformer.decoder.class_embed`` /
``bbox_embed``), so the checkpoint lists every head twice; head 6 is the encoder proposals'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .detectron2 import Rule, alias, apply_rules, rename, resnet_rules
from .mmdet_deformable import deformable_transformer_rules

__all__ = ["DETREX_DINO_RULES", "convert_detrex_dino", "is_detrex_dino"]

_WB = r"(weight|bias)"
_T = r"transformer\."


def _rules() -> list[Rule]:
    rules = resnet_rules(r"backbone\.", "backbone.")
    rules += [
        rename(rf"neck\.(convs|extra_convs)\.(\d+)\.(conv|norm)\.{_WB}", r"neck.\1.\2.\3.\4"),
    ]
    # Deformable-DETR's layers; DINO has no reference-point projection.
    rules += [
        r for r in deformable_transformer_rules(_T) if "reference_points" not in r.pattern.pattern
    ]
    why = "detrex's decoder holds the detector's own head lists"
    rules += [
        rename(
            rf"{_T}decoder\.ref_point_head\.layers\.([01])\.{_WB}",
            r"decoder.ref_point_head.layers.\1.\2",
        ),
        rename(rf"{_T}decoder\.norm\.{_WB}", r"decoder.norm.\1"),
        rename(rf"{_T}tgt_embed\.weight", "query_selection.content.weight"),
        rename(rf"{_T}(enc_output|enc_output_norm)\.{_WB}", r"query_selection.\1.\2"),
        rename(rf"class_embed\.(\d+)\.{_WB}", r"class_embed.\1.\2"),
        rename(rf"bbox_embed\.(\d+)\.layers\.([012])\.{_WB}", r"bbox_embed.\1.layers.\2.\3"),
        alias(rf"{_T}decoder\.class_embed\.(\d+)\.{_WB}", r"class_embed.\1.\2", why),
        alias(
            rf"{_T}decoder\.bbox_embed\.(\d+)\.layers\.([012])\.{_WB}",
            r"bbox_embed.\1.layers.\2.\3",
            why,
        ),
        rename(r"label_enc\.weight", "denoising.label_enc.weight"),
    ]
    return rules


#: The complete table; see the module docstring.
DETREX_DINO_RULES: tuple[Rule, ...] = tuple(_rules())


def convert_detrex_dino(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a detrex DINO ``state_dict`` to our names.

    Args:
        state: the checkpoint's ``"model"`` entry, ``{detrex name: tensor}``.

    Returns:
        ``{sqr name: tensor}`` for a :class:`~sqr.modeling.detectors.DINO`.

    Raises:
        ConversionError: for a key outside the table, or a decoder head that differs from the
            detector's; the message names the key.
    """
    return apply_rules(state, DETREX_DINO_RULES, "detrex_dino")


def is_detrex_dino(state: Mapping[str, Any]) -> bool:
    """Whether detrex-style keys (``transformer.``) belong to DINO: only DINO has the
    denoising label embedding and the learnt query content."""
    return "label_enc.weight" in state or "transformer.tgt_embed.weight" in state
