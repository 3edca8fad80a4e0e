"""Necks: map backbone features to the detector's width."""

from .channel_mapper import ChannelMapping

__all__ = ["ChannelMapping"]
