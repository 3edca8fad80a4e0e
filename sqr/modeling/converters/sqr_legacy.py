"""sqr's own checkpoints from before a parameter was renamed -> today's names.

* AdaMixer's decoder stages were ``decoder.stages.{s}.``; every decoder's stages are now
  ``decoder.layers.{s}.`` (:class:`~sqr.modeling.decoders.base.RecollectingDecoder`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .detectron2 import Rule, apply_rules, rename

__all__ = ["SQR_LEGACY_RULES", "convert_sqr_legacy", "is_sqr_legacy"]

SQR_LEGACY_RULES: list[Rule] = [
    rename(r"decoder\.stages\.(\d+)\.(.+)", r"decoder.layers.\1.\2"),
    rename(r"(.+)", r"\1"),  # every other name is today's
]


def is_sqr_legacy(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has a name that sqr no longer uses."""
    return any(key.startswith("decoder.stages.") for key in state)


def convert_sqr_legacy(state: Mapping[str, Any]) -> dict[str, Any]:
    """``{old sqr name: tensor}`` -> ``{sqr name: tensor}``."""
    return apply_rules(state, SQR_LEGACY_RULES, "sqr_legacy")
