"""Decoders: stage cascades that follow a recollection schedule (see ``docs/ARCHITECTURE.md``)."""

from .adamixer import AdaMixerDecoder, AdaMixerStage
from .dab import DabDetrDecoder
from .deformable import DeformableDetrDecoder
from .dino import DinoDecoder

__all__ = [
    "AdaMixerDecoder",
    "AdaMixerStage",
    "DabDetrDecoder",
    "DeformableDetrDecoder",
    "DinoDecoder",
]
