"""The input projections of both multi-scale detectors: a convolution per backbone level to the
detector's width, GroupNorm, and optionally coarser levels.

One class covers two references, chosen by its options:

* Deformable-DETR: mmdet's ``ChannelMapper`` (``mmdet/models/necks/channel_mapper.py``, mmdet
  2.12) with GroupNorm, which the SQR recipe uses: a GroupNorm per level (``convs.{i}.conv``,
  ``convs.{i}.norm``), no convolution bias, and a stride-64 extra level from C5.
* AdaMixer: the SQR fork's ``ChannelMapping`` (``mmdet/models/necks/identity_fpn.py`` at
  b576a6e): convolutions with a bias (``convs.{i}``) followed by one GroupNorm (``norm``) whose
  single set of affine parameters normalises every level; no extra level.

Neither has a top-down path or an activation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


def _conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool
) -> nn.Conv2d:
    padding = (kernel_size - 1) // 2
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=padding, bias=bias)


def _conv_gn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    num_groups: int,
    bias: bool,
) -> nn.Sequential:
    conv = _conv(in_channels, out_channels, kernel_size, stride, bias)
    return nn.Sequential(OrderedDict(conv=conv, norm=nn.GroupNorm(num_groups, out_channels)))


def select_levels(
    features: Sequence[Tensor] | Mapping[str, Tensor],
    in_features: Sequence[str] | None,
    neck: str,
) -> Sequence[Tensor]:
    """A neck's input levels: the backbone's maps named by ``in_features``, or ``features`` as
    they are when the neck takes a sequence (``in_features=None``).

    Raises:
        TypeError: a dict for a neck that takes a sequence, or the other way round (``neck``
            names the module in the message).
    """
    if isinstance(features, Mapping) != (in_features is not None):
        expected = "a sequence of levels" if in_features is None else "a dict"
        raise TypeError(
            f"{neck}(in_features={in_features}) takes {expected}, got {type(features).__name__}"
        )
    if in_features is not None:
        return [features[name] for name in in_features]
    return features


class ChannelMapper(nn.Module):
    """Map backbone levels to ``out_channels`` and add coarser levels.

    Each input level gets a ``kernel_size`` convolution and GroupNorm, without activation. Extra
    level ``i`` is a 3x3 stride-2 convolution and GroupNorm on the last *raw* input for ``i = 0``
    (C5 in Deformable-DETR, giving stride 64) and on the previous extra level after that.
    Convolutions start xavier-uniform with zero bias (mmdet's ``init_cfg``, mmcv's Xavier init in
    AdaMixer's neck, and the original Deformable-DETR's ``input_proj``).

    Args:
        in_channels: channels of each input level, finest first.
        out_channels: channels of every output level.
        num_extra_levels: coarser levels added after the inputs.
        num_groups: GroupNorm groups.
        kernel_size: of the per-input convolutions (1 in both references).
        bias: convolutions with a bias. mmdet's ChannelMapper (the SQR Deformable-DETR recipe)
            has none, since GroupNorm follows; the original Deformable-DETR's ``input_proj``,
            detrex's ChannelMapper and AdaMixer's neck have one (zero-initialised), and their
            checkpoints need it: a per-channel bias before GroupNorm shifts the group statistics,
            so it cannot be dropped or folded away.
        shared_norm: one GroupNorm (``norm``) normalises every input level, as in AdaMixer, and
            the convolutions are the bare ``convs.{i}``; otherwise each level has its own
            (``convs.{i}.norm``). Needs ``num_extra_levels=0``: no reference has extra levels
            with a shared norm.
        in_features: names of the input levels, finest first: :meth:`forward` then takes the
            backbone's dict and picks these entries (AdaMixer). Without them it takes the levels
            themselves, in order (Deformable-DETR, whose detector picks them).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_extra_levels: int = 1,
        num_groups: int = 32,
        kernel_size: int = 1,
        bias: bool = False,
        shared_norm: bool = False,
        in_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError("ChannelMapper needs at least one input level")
        if num_extra_levels < 0:
            raise ValueError(f"num_extra_levels must be >= 0, got {num_extra_levels}")
        if shared_norm and num_extra_levels:
            raise ValueError(
                f"shared_norm=True needs num_extra_levels=0, got {num_extra_levels}: the shared "
                "GroupNorm normalises the input levels only"
            )
        if in_features is not None and len(in_features) != len(in_channels):
            raise ValueError(
                f"ChannelMapper got {len(in_features)} in_features {list(in_features)} but "
                f"{len(in_channels)} in_channels {in_channels}"
            )
        self.in_features = None if in_features is None else tuple(in_features)
        if shared_norm:
            self.convs = nn.ModuleList(
                _conv(c, out_channels, kernel_size, 1, bias) for c in in_channels
            )
        else:
            self.convs = nn.ModuleList(
                _conv_gn(c, out_channels, kernel_size, 1, num_groups, bias) for c in in_channels
            )
        extra_inputs = [in_channels[-1]] + [out_channels] * (num_extra_levels - 1)
        self.extra_convs = nn.ModuleList(
            _conv_gn(c, out_channels, 3, 2, num_groups, bias)
            for c in extra_inputs[:num_extra_levels]
        )
        # Registered after the convolutions, so that parameters and state_dict keep AdaMixer's
        # order (convs, then norm); the Identity of per-level norms has no parameter, no key.
        self.norm = nn.GroupNorm(num_groups, out_channels) if shared_norm else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def num_levels(self) -> int:
        """Output levels: inputs plus extra levels."""
        return len(self.convs) + len(self.extra_convs)

    def forward(
        self, features: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        """
        Args:
            features: with ``in_features``, the backbone's ``{name: Tensor[B, C_in, H, W]}``;
                without, per input level Tensor[B, C_in_l, H_l, W_l], finest first.

        Returns:
            ``num_levels`` Tensor[B, out_channels, H, W], finest first.
        """
        features = select_levels(features, self.in_features, "ChannelMapper")
        if len(features) != len(self.convs):
            raise ValueError(f"got {len(features)} feature levels, expected {len(self.convs)}")
        outputs = [self.norm(conv(x)) for conv, x in zip(self.convs, features, strict=True)]
        source = features[-1]
        for conv in self.extra_convs:
            outputs.append(conv(source))
            source = outputs[-1]
        return outputs
