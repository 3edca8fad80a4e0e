"""The stand-in detector with BatchNorm after its first convolution: a model whose buffers
(running statistics) change in every training-mode forward pass, as a real backbone's do."""

from __future__ import annotations

from torch import nn

from .standin import StandInDetector


class BatchNormStandIn(StandInDetector):
    def __init__(self, num_classes: int, hidden_dim: int = 16, **kwargs) -> None:
        super().__init__(num_classes, hidden_dim=hidden_dim, **kwargs)
        conv = self.conv1
        self.conv1 = nn.Sequential(conv, nn.BatchNorm2d(hidden_dim))
