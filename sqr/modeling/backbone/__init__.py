"""Backbones: feature extractors returning ``{stage name: Tensor}``."""

from .resnet import STAGE_NAMES, ResNet

__all__ = ["STAGE_NAMES", "ResNet"]
