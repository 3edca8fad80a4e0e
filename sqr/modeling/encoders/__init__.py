"""Encoders: what turns the neck's feature maps into the memory a decoder attends to."""

from .dab import DabDetrEncoder
from .deformable import DeformableDetrEncoder

__all__ = ["DabDetrEncoder", "DeformableDetrEncoder"]
