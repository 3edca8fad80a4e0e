"""Necks: map backbone features to the detector's width (Deformable-DETR's and AdaMixer's input
projections, both :class:`ChannelMapper`)."""

from .channel_mapper import ChannelMapper
from .hybrid_encoder import HybridEncoder

__all__ = ["ChannelMapper", "HybridEncoder"]
