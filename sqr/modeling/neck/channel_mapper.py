"""mmdet's ``ChannelMapper`` with GroupNorm: Deformable-DETR's input projections."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


def _conv_gn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    num_groups: int,
    bias: bool,
) -> nn.Sequential:
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=bias
    )
    return nn.Sequential(OrderedDict(conv=conv, norm=nn.GroupNorm(num_groups, out_channels)))


class ChannelMapper(nn.Module):
    """Map backbone levels to ``out_channels`` and add coarser levels.

    Each input level gets a ``kernel_size`` convolution and GroupNorm, without
    activation. Extra level ``i`` is a 3x3 stride-2 convolution and GroupNorm on the last *raw*
    input for ``i = 0`` (C5 in Deformable-DETR, giving stride 64) and on the previous extra level
    after that. Convolutions start xavier-uniform (mmdet's ``init_cfg``, and the original
    Deformable-DETR's ``input_proj``).

    Args:
        in_channels: channels of each input level, finest first.
        out_channels: channels of every output level.
        num_extra_levels: coarser levels added after the inputs.
        num_groups: GroupNorm groups.
        kernel_size: of the per-input convolutions (1 in Deformable-DETR).
        bias: convolutions with a bias. mmdet's (the SQR recipe) have none, since GroupNorm
            follows; the original Deformable-DETR's ``input_proj`` and detrex's ChannelMapper
            have one (zero-initialised), and their checkpoints need it: a per-channel bias before
            GroupNorm shifts the group statistics, so it cannot be dropped or folded away.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_extra_levels: int = 1,
        num_groups: int = 32,
        kernel_size: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError("ChannelMapper needs at least one input level")
        if num_extra_levels < 0:
            raise ValueError(f"num_extra_levels must be >= 0, got {num_extra_levels}")
        self.convs = nn.ModuleList(
            _conv_gn(c, out_channels, kernel_size, 1, num_groups, bias) for c in in_channels
        )
        extra_inputs = [in_channels[-1]] + [out_channels] * (num_extra_levels - 1)
        self.extra_convs = nn.ModuleList(
            _conv_gn(c, out_channels, 3, 2, num_groups, bias)
            for c in extra_inputs[:num_extra_levels]
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def num_levels(self) -> int:
        """Output levels: inputs plus extra levels."""
        return len(self.convs) + len(self.extra_convs)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            features: per input level Tensor[B, C_in_l, H_l, W_l], finest first.

        Returns:
            ``num_levels`` Tensor[B, out_channels, H, W], finest first.
        """
        if len(features) != len(self.convs):
            raise ValueError(f"got {len(features)} feature levels, expected {len(self.convs)}")
        outputs = [conv(x) for conv, x in zip(self.convs, features, strict=True)]
        source = features[-1]
        for conv in self.extra_convs:
            outputs.append(conv(source))
            source = outputs[-1]
        return outputs
