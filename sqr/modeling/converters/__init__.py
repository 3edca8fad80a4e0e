"""Checkpoint converters: explicit name maps from other codebases to :mod:`sqr` models.

Every converter is a pure function ``{name: Tensor} -> {name: Tensor}`` built on an ordered rule
table (see :mod:`.detectron2`); a key it cannot map raises :class:`ConversionError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..table import native_modules
from .detectron2 import ConversionError, convert_detectron2_resnet
from .detrex import convert_detrex_dab_detr
from .detrex_deformable import (
    convert_detrex_deformable_detr,
    convert_detrex_deformable_detr_refine,
    detrex_deformable_format,
    is_detrex_deformable,
)
from .detrex_dino import convert_detrex_dino, is_detrex_dino
from .mmdet_adamixer import convert_mmdet_adamixer
from .mmdet_deformable import (
    convert_mmdet_deformable_detr,
    convert_mmdet_deformable_detr_refine,
    convert_torchvision_resnet,
    mmdet_deformable_format,
)
from .rtdetr import convert_rtdetr_presnet, convert_rtdetrv2, is_rtdetr_presnet, is_rtdetrv2
from .sqr_legacy import convert_sqr_legacy, is_sqr_legacy

__all__ = [
    "NATIVE_MODULES",
    "is_native",
    "CONVERTERS",
    "ConversionError",
    "convert",
    "detect_format",
    "convert_detectron2_resnet",
    "convert_detrex_dab_detr",
    "convert_detrex_deformable_detr",
    "convert_detrex_deformable_detr_refine",
    "convert_detrex_dino",
    "convert_mmdet_adamixer",
    "convert_mmdet_deformable_detr",
    "convert_mmdet_deformable_detr_refine",
    "convert_rtdetr_presnet",
    "convert_rtdetrv2",
    "convert_sqr_legacy",
    "convert_torchvision_resnet",
]

#: Format name -> converter; the names accepted by ``tools/convert_checkpoint.py --format``.
CONVERTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "detectron2_resnet": convert_detectron2_resnet,
    "detrex_dab_detr": convert_detrex_dab_detr,
    "detrex_deformable_detr": convert_detrex_deformable_detr,
    "detrex_deformable_detr_refine": convert_detrex_deformable_detr_refine,
    "detrex_dino": convert_detrex_dino,
    "mmdet_adamixer": convert_mmdet_adamixer,
    "mmdet_deformable_detr": convert_mmdet_deformable_detr,
    "mmdet_deformable_detr_refine": convert_mmdet_deformable_detr_refine,
    "rtdetr_presnet": convert_rtdetr_presnet,
    "rtdetrv2": convert_rtdetrv2,
    "sqr_legacy": convert_sqr_legacy,
    "torchvision_resnet": convert_torchvision_resnet,
}


#: The top-level modules of sqr's detectors, from the detector table (tests/contract keeps each
#: entry's set equal to its model's).
NATIVE_MODULES = native_modules()


def is_native(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` already uses sqr's names: a backbone and a decoder, no top-level
    module that sqr's detectors lack, no official RT-DETRv2 key (its top-level modules are
    named as ours, their insides are not) and no name sqr has since renamed."""
    top = {key.removeprefix("module.").split(".")[0] for key in state}
    renamed = is_rtdetrv2(state) or is_sqr_legacy(state)
    return {"backbone", "decoder"} <= top <= NATIVE_MODULES and not renamed


def convert(state: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """Convert ``state`` with the converter registered as ``fmt``.

    Args:
        state: Source ``{name: tensor}``.
        fmt: A key of :data:`CONVERTERS`.

    Returns:
        The converted ``{name: tensor}``.

    Raises:
        ValueError: ``fmt`` is unknown (the message lists the known formats).
        ConversionError: The converter could not map a key.
    """
    if fmt not in CONVERTERS:
        raise ValueError(
            f"Unknown checkpoint format {fmt!r}; known formats: {', '.join(sorted(CONVERTERS))}"
        )
    return CONVERTERS[fmt](state)


def _is_detectron2_resnet_key(key: str) -> bool:
    """detectron2's ResNet: ``res2.*`` or its stem convolution ``stem.conv1.weight`` (sqr's
    PResNet also has a ``stem``, but its convolutions are ``stem.conv1.conv.*``)."""
    return key.startswith("res2.") or key.startswith("stem.conv1.weight")


def detect_format(state: Mapping[str, Any]) -> str | None:
    """Recognise a foreign checkpoint by its key names.

    Args:
        state: a checkpoint's ``"model"`` entry.

    Returns:
        ``"detrex_dab_detr"`` when keys start with ``transformer.``, or
        ``"detrex_deformable_detr"`` / ``"detrex_deformable_detr_refine"`` when they also include
        ``transformer.level_embeds`` (see :func:`detrex_deformable_format`), or
        ``"detrex_dino"`` when they include DINO's ``label_enc.weight`` or
        ``transformer.tgt_embed.weight``;
        ``"detectron2_resnet"`` when they start with ``stem.``/``res2.`` (optionally under
        ``backbone.``);
        ``"mmdet_deformable_detr"`` / ``"mmdet_deformable_detr_refine"`` for keys under
        ``bbox_head.transformer.`` (see :func:`mmdet_deformable_format`); ``"mmdet_adamixer"``
        for keys under ``roi_head.`` or ``rpn_head.`` (mmdet's AdaMixer);
        ``"torchvision_resnet"`` for a bare torchvision classifier (``conv1.weight`` and
        ``fc.weight``; sqr's ResNet has no ``fc``); ``"rtdetrv2"`` for the official RT-DETRv2
        (``decoder.dec_score_head.*``), ``"rtdetr_presnet"`` for its bare ImageNet PResNet
        (``conv1.conv1_1.*``); ``"sqr_legacy"`` for sqr's own names from
        before a rename (:mod:`.sqr_legacy`); None otherwise (sqr's own names).

    Raises:
        ValueError: the keys match several formats.
    """
    found = _formats(state)
    if len(found) > 1:
        raise ValueError(f"checkpoint keys match several formats: {', '.join(found)}")
    return found[0] if found else None


def _formats(state: Mapping[str, Any]) -> list[str]:
    """Every format whose keys ``state`` has (see :func:`detect_format`)."""
    found = []
    if any(key.startswith("transformer.") for key in state):
        # detrex nests the transformer; DINO has denoising label embeddings, and only the
        # multi-scale detectors have level_embeds.
        if is_detrex_dino(state):
            found.append("detrex_dino")
        elif is_detrex_deformable(state):
            found.append(detrex_deformable_format(state))
        else:
            found.append("detrex_dab_detr")
    elif any(_is_detectron2_resnet_key(key.removeprefix("backbone.")) for key in state):
        found.append("detectron2_resnet")
    if any(key.startswith("bbox_head.transformer.") for key in state):
        found.append(mmdet_deformable_format(state))
    if any(key.startswith(("roi_head.", "rpn_head.")) for key in state):
        found.append("mmdet_adamixer")
    if "conv1.weight" in state and "fc.weight" in state:
        found.append("torchvision_resnet")
    if is_rtdetrv2(state):
        found.append("rtdetrv2")
    if is_rtdetr_presnet(state):
        found.append("rtdetr_presnet")
    if is_sqr_legacy(state):
        found.append("sqr_legacy")
    return found
