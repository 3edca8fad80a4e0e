"""RT-DETRv2 weights (lyuwenyu/RT-DETR, ``rtdetrv2_pytorch`` at 068dfde) -> sqr names.

Covers the backbone (:class:`~sqr.modeling.backbone.PResNet`) and the encoder
(:class:`~sqr.modeling.neck.HybridEncoder`); the decoder's table comes with the detector. The
official names and ours, with ``CN`` = ``conv.weight`` or ``norm.X`` and ``X`` in ``weight, bias,
running_mean, running_var, num_batches_tracked``::

    PResNet
    conv1.conv1_{n}.CN                                  -> stem.conv{n}.CN
    res_layers.{i}.blocks.{j}.branch2{a,b,c}.CN         -> layer{i+1}.{j}.conv{1,2,3}.CN
    res_layers.0.blocks.0.short.CN                      -> layer1.0.shortcut.CN
    res_layers.{i>0}.blocks.0.short.conv.CN             -> layer{i+1}.0.shortcut.CN (after pool)

    HybridEncoder
    input_proj.{l}.CN                                   -> input_proj.{l}.CN
    encoder.{e}.layers.{k}.{self_attn.*,linear*,norm*}  -> aifi.{e}.{k}.{same}
    lateral_convs.{l}.CN, downsample_convs.{l}.CN       -> unchanged
    P.conv1.CN                                          -> P.main_conv.CN
    P.conv2.CN                                          -> P.short_conv.CN
    P.conv3.CN                                          -> P.out_conv.CN
    P.bottlenecks.{b}.conv1.CN                          -> P.blocks.{b}.conv3x3.CN
    P.bottlenecks.{b}.conv2.CN                          -> P.blocks.{b}.conv1x1.CN

with ``P`` = ``fpn_blocks.{l}`` or ``pan_blocks.{l}`` (CSPRepLayers and their RepVGG blocks).

``num_batches_tracked`` is renamed like the rest: the official FrozenBatchNorm2d has none, its
BatchNorm2d has one, and so do ours. A RepVGG block fused for deployment
(``bottlenecks.{b}.conv.*``) has no rule: it is not a training checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .detectron2 import Rule, apply_rules, rename

__all__ = [
    "convert_rtdetr_presnet",
    "convert_rtdetrv2_backbone_encoder",
    "rtdetr_hybrid_encoder_rules",
    "rtdetr_presnet_rules",
]

_NORM = r"norm\.(?:weight|bias|running_mean|running_var|num_batches_tracked)"
# A ConvNormAct's tensors, captured as group 1 of every rule that uses it.
_CN = rf"(conv\.weight|{_NORM})"


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
        target_prefix: Literal text put before our names, e.g. ``"neck."``.

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


def convert_rtdetr_presnet(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a bare official PResNet state_dict (e.g. the ImageNet ``ResNet*_vd_*.pth`` files
    its backbones start from) to :class:`~sqr.modeling.backbone.PResNet` names.

    Args:
        state: ``{official name: tensor}``; not modified.

    Returns:
        ``{our name: tensor}``, same tensor objects.

    Raises:
        ConversionError: a key that is not a PResNet tensor.
    """
    return apply_rules(state, rtdetr_presnet_rules("", ""), "rtdetr_presnet")


def convert_rtdetrv2_backbone_encoder(
    state: Mapping[str, Any], backbone_prefix: str = "backbone.", encoder_prefix: str = "neck."
) -> dict[str, Any]:
    """Rename the ``backbone.*`` and ``encoder.*`` entries of an official RT-DETRv2 model
    state_dict (the ``model`` or ``ema`` weights of a published ``.pth``).

    Args:
        state: ``{official name: tensor}``; not modified. Only backbone and encoder keys are
            accepted until the decoder's rules exist.
        backbone_prefix: put before our PResNet names.
        encoder_prefix: put before our HybridEncoder names.

    Returns:
        ``{our name: tensor}``, same tensor objects.

    Raises:
        ConversionError: a key outside the backbone and encoder tables (a decoder key included).
    """
    rules = rtdetr_presnet_rules(r"backbone\.", backbone_prefix)
    rules += rtdetr_hybrid_encoder_rules(r"encoder\.", encoder_prefix)
    return apply_rules(state, rules, "rtdetrv2")
