"""detrex DAB-DETR / SQR-DAB-DETR checkpoints -> :mod:`sqr` DAB-DETR names.

detrex wraps every transformer block in generic containers (``attentions.N``, ``ffns.0``,
``norms.N``) and nests encoder/decoder under ``transformer.``; our model names the modules by role
and puts ``encoder``/``decoder`` at the top level. The table below, applied in order by
:func:`~sqr.modeling.converters.detectron2.apply_rules`, is the complete map (``{i}`` is a layer
index, ``X`` the rest of the key)::

    backbone.<detectron2 ResNet name>                 -> backbone.<torchvision name>
    input_proj.*, anchor_box_embed.weight,
    class_embed.*, bbox_embed.layers.{0,1,2}.*        -> unchanged
    transformer.encoder.query_scale.layers.{0,1}.*    -> encoder.query_scale.layers.{0,1}.*
    transformer.encoder.layers.{i}.attentions.0.attn.X
                                                      -> encoder.layers.{i}.self_attn.X
    transformer.{enc,dec}oder.layers.{i}.ffns.0.layers.0.0.*   -> ....ffn.linear1.*
    transformer.{enc,dec}oder.layers.{i}.ffns.0.layers.0.1.weight -> ....ffn.activation.weight
    transformer.{enc,dec}oder.layers.{i}.ffns.0.layers.1.*     -> ....ffn.linear2.*
    transformer.{enc,dec}oder.layers.{i}.ffns.0.activation.weight
                                                      -> dropped: the same PReLU as layers.0.1
    transformer.encoder.layers.{i}.norms.{0,1}.*      -> encoder.layers.{i}.norm{1,2}.*
    transformer.decoder.layers.{i}.attentions.0.X     -> decoder.layers.{i}.self_attn.X
    transformer.decoder.layers.{i}.attentions.1.X     -> decoder.layers.{i}.cross_attn.X
    transformer.decoder.layers.{i}.norms.{0,1,2}.*    -> decoder.layers.{i}.norm{1,2,3}.*
    transformer.decoder.{query_scale,ref_point_head,ref_anchor_head}.layers.{0,1}.*
                                                      -> decoder.{same}.layers.{0,1}.*
    transformer.decoder.post_norm_layer.*             -> decoder.norm.*
    transformer.decoder.bbox_embed.layers.{0,1,2}.*   -> dropped: the same MLP as bbox_embed

"Dropped" aliases are checked to equal their source, so a checkpoint whose copies disagree is
reported instead of half-loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .detectron2 import Rule, alias, apply_rules, numbered_norm_rules, rename, resnet_rules

__all__ = ["DETREX_DAB_DETR_RULES", "convert_detrex_dab_detr"]

_WB = r"(weight|bias)"
_ENC = r"transformer\.encoder"
_DEC = r"transformer\.decoder"
_CODER_LAYER = r"transformer\.(encoder|decoder)\.layers\.(\d+)"
# Projections of detrex's ConditionalSelfAttention / ConditionalCrossAttention (the cross one has
# query_pos_proj only in layer 0; the pattern allows it everywhere and the model decides).
_SELF_PROJ = (
    r"(query_content_proj|query_pos_proj|key_content_proj|key_pos_proj|value_proj|out_proj)"
)
_CROSS_PROJ = (
    r"(query_content_proj|query_pos_proj|query_pos_sine_proj|key_content_proj|key_pos_proj"
    r"|value_proj|out_proj)"
)


def _build_rules() -> list[Rule]:
    rules = resnet_rules(r"backbone\.", "backbone.")
    rules += [
        # Heads and embeddings keep their names.
        rename(rf"input_proj\.{_WB}", r"input_proj.\1"),
        rename(r"anchor_box_embed\.weight", "anchor_box_embed.weight"),
        rename(rf"class_embed\.{_WB}", r"class_embed.\1"),
        rename(rf"bbox_embed\.layers\.(\d+)\.{_WB}", r"bbox_embed.layers.\1.\2"),
        # Encoder.
        rename(rf"{_ENC}\.query_scale\.layers\.(\d+)\.{_WB}", r"encoder.query_scale.layers.\1.\2"),
        rename(
            rf"{_ENC}\.layers\.(\d+)\.attentions\.0\.attn\."
            r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
            r"encoder.layers.\1.self_attn.\2",
        ),
        # FFN of both encoder and decoder layers (detrex's FFN: Sequential(Linear, act, Dropout),
        # Linear, Dropout; ``activation`` is the very module at ``layers.0.1``).
        rename(rf"{_CODER_LAYER}\.ffns\.0\.layers\.0\.0\.{_WB}", r"\1.layers.\2.ffn.linear1.\3"),
        rename(
            rf"{_CODER_LAYER}\.ffns\.0\.layers\.0\.1\.weight",
            r"\1.layers.\2.ffn.activation.weight",
        ),
        rename(rf"{_CODER_LAYER}\.ffns\.0\.layers\.1\.{_WB}", r"\1.layers.\2.ffn.linear2.\3"),
        alias(
            rf"{_CODER_LAYER}\.ffns\.0\.activation\.weight",
            r"transformer.\1.layers.\2.ffns.0.layers.0.1.weight",
            "detrex's FFN registers its PReLU twice",
        ),
        # Decoder.
        rename(
            rf"{_DEC}\.layers\.(\d+)\.attentions\.0\.{_SELF_PROJ}\.{_WB}",
            r"decoder.layers.\1.self_attn.\2.\3",
        ),
        rename(
            rf"{_DEC}\.layers\.(\d+)\.attentions\.1\.{_CROSS_PROJ}\.{_WB}",
            r"decoder.layers.\1.cross_attn.\2.\3",
        ),
        rename(
            rf"{_DEC}\.(query_scale|ref_point_head|ref_anchor_head)\.layers\.(\d+)\.{_WB}",
            r"decoder.\1.layers.\2.\3",
        ),
        rename(rf"{_DEC}\.post_norm_layer\.{_WB}", r"decoder.norm.\1"),
        alias(
            rf"{_DEC}\.bbox_embed\.layers\.(\d+)\.{_WB}",
            r"bbox_embed.layers.\1.\2",
            "detrex shares the box head with the decoder for iterative refinement",
        ),
    ]
    return rules + numbered_norm_rules(r"transformer\.", {"encoder": 2, "decoder": 3})


#: The complete rule table; see the module docstring.
DETREX_DAB_DETR_RULES: tuple[Rule, ...] = tuple(_build_rules())


def convert_detrex_dab_detr(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a detrex DAB-DETR (or SQR-DAB-DETR) ``state_dict`` to our DAB-DETR names.

    Args:
        state: The checkpoint's ``"model"`` entry, ``{detrex name: tensor}``.

    Returns:
        ``{sqr name: tensor}``; the two kinds of detrex aliases are dropped after checking that
        they equal their source.

    Raises:
        ConversionError: For a key outside the table, two keys with the same target, or an alias
            missing its source or holding a different value. The message names the key.
    """
    return apply_rules(state, DETREX_DAB_DETR_RULES, "detrex_dab_detr")
