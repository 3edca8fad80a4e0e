"""Backbones: feature extractors returning ``{stage name: Tensor}``."""

from .presnet import PResNet
from .resnet import STAGE_NAMES, ResNet

__all__ = ["STAGE_NAMES", "PResNet", "ResNet"]
