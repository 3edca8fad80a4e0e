"""Detectors."""

from .adamixer import AdaMixer, InitialQueryGenerator
from .adamixer_decoder import AdaMixerDecoder, AdaMixerStage
from .base import QueryDetector
from .dab_detr import DABDETR
from .dab_transformer import DabDetrDecoder, DabDetrEncoder
from .deformable_detr import DeformableDETR
from .deformable_encoder import DeformableDetrEncoder
from .deformable_transformer import DeformableDetrDecoder
from .dino import DINO
from .dino_transformer import DinoDecoder, MixedQuerySelection

__all__ = [
    "AdaMixer",
    "AdaMixerDecoder",
    "AdaMixerStage",
    "DABDETR",
    "DabDetrDecoder",
    "DabDetrEncoder",
    "DeformableDETR",
    "DeformableDetrDecoder",
    "DeformableDetrEncoder",
    "DINO",
    "DinoDecoder",
    "InitialQueryGenerator",
    "MixedQuerySelection",
    "QueryDetector",
]
