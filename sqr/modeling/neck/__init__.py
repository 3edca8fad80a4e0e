"""Necks: map backbone features to the detector's width (Deformable-DETR's ``ChannelMapper``,
AdaMixer's ``ChannelMapping``)."""

from .channel_mapper import ChannelMapper
from .channel_mapping import ChannelMapping

__all__ = ["ChannelMapper", "ChannelMapping"]
