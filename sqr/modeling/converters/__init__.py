"""Checkpoint converters: explicit name maps from other codebases to :mod:`sqr` models.

Every converter is a pure function ``{name: Tensor} -> {name: Tensor}`` built on an ordered rule
table (see :mod:`.detectron2`); a key it cannot map raises :class:`ConversionError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .detectron2 import ConversionError, convert_detectron2_resnet
from .detrex import convert_detrex_dab_detr

__all__ = [
    "CONVERTERS",
    "ConversionError",
    "convert",
    "convert_detectron2_resnet",
    "convert_detrex_dab_detr",
]

#: Format name -> converter; the names accepted by ``tools/convert_checkpoint.py --format``.
CONVERTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "detectron2_resnet": convert_detectron2_resnet,
    "detrex_dab_detr": convert_detrex_dab_detr,
}


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
