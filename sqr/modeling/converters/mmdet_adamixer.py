"""mmdet AdaMixer / SQR-AdaMixer checkpoints -> :class:`~sqr.modeling.detectors.AdaMixer` names.

mmdet (2.12, the SQR release, Fangyi-Chen/SQR at b576a6e; ``{'meta', 'state_dict'}``) builds
AdaMixer as a two-stage detector: the query generator is ``rpn_head``, the decoder stages are
``roi_head.bbox_head.{s}``. Plain, SQR and SQR "optimize" checkpoints share these keys. The
table below, applied in order by :func:`~sqr.modeling.converters.detectron2.apply_rules`, is the
complete map (``{s}`` a stage index, ``X`` the rest of the key, ``S`` =
``roi_head.bbox_head.{s}.``, ``D`` = ``decoder.layers.{s}.``)::

    backbone.<torchvision ResNet name>             -> unchanged
    backbone.*.num_batches_tracked                 -> dropped (FrozenBatchNorm2d)
    neck.lateral_convs.{i}.conv.{weight,bias}      -> neck.convs.{i}.{weight,bias}
    neck.gn_out.X                                  -> neck.norm.X
    rpn_head.init_content_features.weight          -> query_generator.content.weight
    rpn_head.init_proposal_bboxes.weight           -> dropped after checking it is the whole
                                                      image, (0.5, 0.5, 1, 1), in every row
    S attention.attn.{in_proj_weight,in_proj_bias,out_proj.X}
                                                   -> D self_attn.{same}
    S attention_norm.X                             -> D self_attn_norm.X
    S iof_tau                                      -> D self_attn.iof_tau
    S sampling_n_mixing.sampling_offset_generator.0.X
                                                   -> D sampling.offset_generator.X
    S sampling_n_mixing.adaptive_mixing.parameter_generator.0.X
                                                   -> D mixing.parameter_generator.X
    S sampling_n_mixing.adaptive_mixing.out_proj.X -> D mixing.out_proj.X
    S sampling_n_mixing.norm.X                     -> D mixing_norm.X
    S ffn.layers.0.0.X / ffn.layers.1.X            -> D ffn.linear1.X / D ffn.linear2.X
    S ffn_norm.X                                   -> D ffn_norm.X
    S cls_fcs.{0,1}.X / fc_cls.X                   -> D cls_branch.{0,1}.X / D cls_branch.3.X
    S reg_fcs.{0,1}.X / fc_reg.X                   -> D reg_branch.{0,1}.X / D reg_branch.3.X

The proposal boxes are an embedding in mmdet, but detached on use, so they never train; ours are
computed. A checkpoint whose boxes are not the whole image cannot be represented and is rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .detectron2 import ConversionError, Rule, apply_rules, drop, rename
from .mmdet_deformable import torchvision_resnet_rules

__all__ = ["MMDET_ADAMIXER_RULES", "convert_mmdet_adamixer"]

_WB = r"(weight|bias)"
_S = r"roi_head\.bbox_head\.(\d+)\."
_DST = r"decoder.layers.\1."
_PROPOSALS = "rpn_head.init_proposal_bboxes.weight"


def _build_rules() -> list[Rule]:
    rules = torchvision_resnet_rules(r"backbone\.", "backbone.")
    rules += [
        rename(rf"neck\.lateral_convs\.(\d+)\.conv\.{_WB}", r"neck.convs.\1.\2"),
        rename(rf"neck\.gn_out\.{_WB}", r"neck.norm.\1"),
        rename(r"rpn_head\.init_content_features\.weight", "query_generator.content.weight"),
        drop(
            r"rpn_head\.init_proposal_bboxes\.weight",
            "fixed whole-image boxes, computed by the model (checked before conversion)",
        ),
        rename(
            rf"{_S}attention\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
            _DST + r"self_attn.\2",
        ),
        rename(rf"{_S}attention_norm\.{_WB}", _DST + r"self_attn_norm.\2"),
        rename(rf"{_S}iof_tau", _DST + "self_attn.iof_tau"),
        rename(
            rf"{_S}sampling_n_mixing\.sampling_offset_generator\.0\.{_WB}",
            _DST + r"sampling.offset_generator.\2",
        ),
        rename(
            rf"{_S}sampling_n_mixing\.adaptive_mixing\.parameter_generator\.0\.{_WB}",
            _DST + r"mixing.parameter_generator.\2",
        ),
        rename(
            rf"{_S}sampling_n_mixing\.adaptive_mixing\.out_proj\.{_WB}",
            _DST + r"mixing.out_proj.\2",
        ),
        rename(rf"{_S}sampling_n_mixing\.norm\.{_WB}", _DST + r"mixing_norm.\2"),
        rename(rf"{_S}ffn\.layers\.0\.0\.{_WB}", _DST + r"ffn.linear1.\2"),
        rename(rf"{_S}ffn\.layers\.1\.{_WB}", _DST + r"ffn.linear2.\2"),
        rename(rf"{_S}ffn_norm\.{_WB}", _DST + r"ffn_norm.\2"),
    ]
    # mmdet: {cls,reg}_fcs = [Linear, LayerNorm, ReLU], then fc_{cls,reg}; ours one Sequential.
    for fcs, fc, branch in (
        ("cls_fcs", "fc_cls", "cls_branch"),
        ("reg_fcs", "fc_reg", "reg_branch"),
    ):
        rules += [
            rename(rf"{_S}{fcs}\.([01])\.{_WB}", _DST + rf"{branch}.\2.\3"),
            rename(rf"{_S}{fc}\.{_WB}", _DST + rf"{branch}.3.\2"),
        ]
    return rules


#: The complete table; see the module docstring.
MMDET_ADAMIXER_RULES: tuple[Rule, ...] = tuple(_build_rules())


def convert_mmdet_adamixer(state: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an mmdet (SQR-)AdaMixer ``state_dict`` to our names.

    Args:
        state: the checkpoint's ``"state_dict"``, ``{mmdet name: tensor}``.

    Returns:
        ``{sqr name: tensor}`` for a :class:`~sqr.modeling.detectors.AdaMixer`.

    Raises:
        ConversionError: for a key outside the table, or proposal boxes that are not the whole
            image (the message names the key).
    """
    if _PROPOSALS in state:
        boxes = torch.as_tensor(state[_PROPOSALS])
        whole = boxes.new_tensor([0.5, 0.5, 1.0, 1.0])
        if (
            boxes.dim() != 2
            or boxes.shape[1] != 4
            or not torch.equal(boxes, whole.expand_as(boxes))
        ):
            raise ConversionError(
                _PROPOSALS,
                f"mmdet_adamixer: '{_PROPOSALS}' must be whole-image boxes (0.5, 0.5, 1, 1) in "
                "every row; sqr's AdaMixer computes them and cannot load other boxes",
            )
    return apply_rules(state, MMDET_ADAMIXER_RULES, "mmdet_adamixer")
