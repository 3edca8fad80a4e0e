"""AdaMixer's ``ChannelMapping`` neck: a 1x1 convolution per level and one shared GroupNorm.

As in the SQR fork of MMDetection (``mmdet/models/necks/identity_fpn.py`` at b576a6e): no
top-down path, no extra levels, no activation; the same ``GroupNorm`` (one set of affine
parameters) normalises every level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ChannelMapping(nn.Module):
    """Project each chosen backbone level to ``out_channels``, then GroupNorm it.

    Args:
        in_features: backbone outputs to use, fine to coarse (e.g. "res2".."res5").
        in_channels: their channels.
        out_channels: output channels of every level.
        num_groups: groups of the shared GroupNorm.
    """

    def __init__(
        self,
        in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        in_channels: Sequence[int] = (256, 512, 1024, 2048),
        out_channels: int = 256,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(in_features) != len(in_channels):
            raise ValueError(
                f"ChannelMapping got {len(in_features)} in_features {list(in_features)} but "
                f"{len(in_channels)} in_channels {list(in_channels)}"
            )
        self.in_features = tuple(in_features)
        self.convs = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in in_channels)
        self.norm = nn.GroupNorm(num_groups, out_channels)
        for conv in self.convs:  # mmcv's Xavier init (uniform, zero bias)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            features: backbone outputs ``{name: Tensor[B, C_in, H, W]}``.

        Returns:
            One Tensor[B, out_channels, H, W] per name in ``in_features``, in that order.
        """
        return [
            self.norm(conv(features[name]))
            for name, conv in zip(self.in_features, self.convs, strict=True)
        ]
