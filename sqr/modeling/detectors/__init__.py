"""Detectors."""

from .dab_detr import DABDETR
from .dab_transformer import DabDetrDecoder, DabDetrEncoder

__all__ = ["DABDETR", "DabDetrDecoder", "DabDetrEncoder"]
