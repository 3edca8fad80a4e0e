"""Detectors: one file per detector, each a :class:`QueryDetector`."""

from .adamixer import AdaMixer, InitialQueryGenerator
from .base import QueryDetector
from .dab_detr import DABDETR
from .deformable_detr import DeformableDETR
from .dino import DINO

__all__ = [
    "AdaMixer",
    "DABDETR",
    "DeformableDETR",
    "DINO",
    "InitialQueryGenerator",
    "QueryDetector",
]
