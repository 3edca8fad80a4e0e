"""RT-DETR's hybrid encoder: AIFI on the coarsest level, then CCFF (a PAN-style FPN).

A re-implementation (not a copy) of ``HybridEncoder`` in lyuwenyu/RT-DETR,
``rtdetrv2_pytorch/src/zoo/rtdetr/hybrid_encoder.py`` at 068dfde, version "v2", with the same
numerics:

1. **Input projection**: a 1x1 convolution and BatchNorm per level to ``hidden_dim``.
2. **AIFI** (attention-based intra-scale feature interaction): on the levels in
   ``use_encoder_idx`` (the last one in every official config), ``num_encoder_layers``
   post-norm transformer encoder layers with a fixed 2-d sin-cos position embedding
   (:func:`sincos_position_embedding_2d`).
3. **CCFF** (CNN-based cross-scale feature fusion): a top-down path (1x1 lateral ConvNormAct on
   the coarser map, nearest 2x upsampling, concatenation with the finer map, a
   :class:`CSPRepLayer`) and a bottom-up path (3x3 stride-2 ConvNormAct, concatenation, a
   :class:`CSPRepLayer`).

Parameter names are ours; :mod:`sqr.modeling.converters.rtdetr` maps the official ones. The
official model can cache the position embedding for a fixed ``eval_spatial_size``; here it is
always computed from the feature size, which gives the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbone.presnet import ConvNormAct, activation_layer
from .channel_mapper import select_levels

__all__ = [
    "AIFILayer",
    "CSPRepLayer",
    "HybridEncoder",
    "RepVGGBlock",
    "sincos_position_embedding_2d",
]


def sincos_position_embedding_2d(
    height: int,
    width: int,
    embed_dim: int,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> Tensor:
    """RT-DETR's fixed 2-d sin-cos embedding of the tokens of an ``height x width`` map.

    With ``q = embed_dim / 4`` frequencies ``omega_i = temperature ** (-i / q)`` and two integer
    coordinates ``(a, b)`` per token, the channels are
    ``[sin(a * omega), cos(a * omega), sin(b * omega), cos(b * omega)]`` (blocks, not interleaved).

    The official code enumerates a ``width x height`` grid with the first coordinate major while
    the tokens are flattened row-major from ``[H, W]``: token ``k = y * width + x`` gets
    ``a = k // height`` and ``b = k % height``. For a square map that is ``a = y`` and ``b = x``;
    for other shapes it is reproduced as is. Computed in float32 like the official embedding.

    Args:
        height: rows of the feature map.
        width: columns of the feature map.
        embed_dim: channels, a multiple of 4.
        temperature: frequency base.
        device: where to build it.

    Returns:
        Tensor[1, height * width, embed_dim], float32.
    """
    if embed_dim % 4:
        raise ValueError(f"the 2-d sin-cos embedding needs embed_dim % 4 == 0, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / temperature ** (
        torch.arange(quarter, dtype=torch.float32, device=device) / quarter
    )
    token = torch.arange(height * width, device=device)
    a = torch.div(token, height, rounding_mode="floor").to(torch.float32)[:, None] * omega
    b = (token % height).to(torch.float32)[:, None] * omega
    return torch.cat((a.sin(), a.cos(), b.sin(), b.cos()), dim=1)[None]


class AIFILayer(nn.Module):
    """A post-norm transformer encoder layer whose queries and keys carry a position embedding.

    ``x = norm1(x + drop(attn(x + pos, x + pos, x)))``, then
    ``x = norm2(x + drop(linear2(drop(act(linear1(x))))))``.

    Args:
        embed_dim: token channels.
        num_heads: attention heads.
        feedforward_dim: hidden channels of the feed-forward block.
        dropout: on the attention weights, after the activation and on both residual branches.
        activation: of the feed-forward block ("gelu" in RT-DETR).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        feedforward_dim: int,
        dropout: float = 0.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        # Creation order follows the official layer, so a seed gives the same initial weights.
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True)
        self.linear1 = nn.Linear(embed_dim, feedforward_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation_layer(activation)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """
        Args:
            x: tokens, Tensor[B, N, embed_dim].
            pos: position embedding, Tensor[1 or B, N, embed_dim].

        Returns:
            Tensor[B, N, embed_dim].
        """
        q = x + pos
        attended = self.self_attn(q, q, value=x, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attended))
        hidden = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm2(x + self.dropout2(hidden))


class RepVGGBlock(nn.Module):
    """``act(bn(conv3x3(x)) + bn(conv1x1(x)))``, the training-time form of a RepVGG block.

    Args:
        channels: input and output channels.
        activation: applied to the sum.
    """

    def __init__(self, channels: int, activation: str = "silu") -> None:
        super().__init__()
        self.conv3x3 = ConvNormAct(channels, channels, 3)
        self.conv1x1 = ConvNormAct(channels, channels, 1)
        self.act = activation_layer(activation)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        return self.act(self.conv3x3(x) + self.conv1x1(x))


class CSPRepLayer(nn.Module):
    """A CSP block: ``out_conv(blocks(main_conv(x)) + short_conv(x))``.

    ``main_conv`` and ``short_conv`` are 1x1 ConvNormActs to ``int(out_channels * expansion)``
    hidden channels; ``blocks`` are ``num_blocks`` :class:`RepVGGBlock`; ``out_conv`` is a 1x1
    ConvNormAct back to ``out_channels``, or the identity when the widths already agree.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        num_blocks: RepVGG blocks on the main path.
        expansion: hidden width relative to ``out_channels``.
        activation: of every convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 3,
        expansion: float = 1.0,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        if hidden < 1:
            raise ValueError(
                f"CSPRepLayer expansion={expansion} leaves no hidden channel for {out_channels}"
            )
        self.main_conv = ConvNormAct(in_channels, hidden, 1, activation=activation)
        self.short_conv = ConvNormAct(in_channels, hidden, 1, activation=activation)
        self.blocks = nn.Sequential(*(RepVGGBlock(hidden, activation) for _ in range(num_blocks)))
        self.out_conv = (
            ConvNormAct(hidden, out_channels, 1, activation=activation)
            if hidden != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, H, W] -> [B, out_channels, H, W]``."""
        return self.out_conv(self.blocks(self.main_conv(x)) + self.short_conv(x))


class HybridEncoder(nn.Module):
    """RT-DETR's encoder: input projections, AIFI, then the top-down and bottom-up fusion.

    Each level must be exactly twice the size of the next coarser one (as for strides 8, 16, 32
    on inputs divisible by 32): the top-down path upsamples by 2 and concatenates.

    Args:
        in_channels: channels of each input level, finest first.
        feat_strides: stride of each level (kept for the detector; the outputs keep them).
        hidden_dim: channels of every output level.
        num_heads: AIFI attention heads.
        dim_feedforward: AIFI feed-forward hidden channels.
        dropout: AIFI dropout.
        encoder_activation: AIFI feed-forward activation.
        use_encoder_idx: levels that get AIFI (indices into ``in_channels``).
        num_encoder_layers: AIFI layers per such level; 0 skips AIFI.
        pe_temperature: frequency base of the position embedding.
        expansion: hidden width of the CSP blocks relative to ``hidden_dim``.
        depth_mult: the CSP blocks have ``round(3 * depth_mult)`` RepVGG blocks.
        activation: of every fusion convolution.
        in_features: names of the input levels, finest first: :meth:`forward` then takes the
            backbone's dict and picks these entries. Without them it takes the levels in order.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2048),
        feat_strides: Sequence[int] = (8, 16, 32),
        hidden_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        encoder_activation: str = "gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000.0,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        activation: str = "silu",
        in_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        in_channels, feat_strides = list(in_channels), list(feat_strides)
        num_levels = len(in_channels)
        if num_levels < 1 or len(feat_strides) != num_levels:
            raise ValueError(
                f"HybridEncoder needs one feat_stride per input level, got in_channels="
                f"{in_channels} and feat_strides={feat_strides}"
            )
        if in_features is not None and len(in_features) != num_levels:
            raise ValueError(
                f"HybridEncoder got {len(in_features)} in_features {list(in_features)} but "
                f"{num_levels} in_channels {in_channels}"
            )
        if any(i not in range(num_levels) for i in use_encoder_idx):
            raise ValueError(
                f"HybridEncoder use_encoder_idx={list(use_encoder_idx)} must index the "
                f"{num_levels} levels"
            )
        if hidden_dim % 4 or hidden_dim % num_heads:
            raise ValueError(
                f"HybridEncoder hidden_dim={hidden_dim} must be divisible by 4 (position "
                f"embedding) and by num_heads={num_heads}"
            )
        self.in_features = None if in_features is None else tuple(in_features)
        self.feat_strides = tuple(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = tuple(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature

        self.input_proj = nn.ModuleList(ConvNormAct(c, hidden_dim, 1) for c in in_channels)
        # The official model deep-copies one layer everywhere, so every AIFI layer starts from
        # the same weights; kept for the same initialisation under a seed. Each copy is built
        # with the random state put back afterwards and given the first layer's state, which is
        # what deepcopy gives (deepcopy does not work under FakeTensorMode).
        args = (hidden_dim, num_heads, dim_feedforward, dropout, encoder_activation)
        layer = AIFILayer(*args)

        def copy_of_layer() -> AIFILayer:
            with torch.random.fork_rng(devices=[]):
                clone = AIFILayer(*args)
            clone.load_state_dict(layer.state_dict())
            return clone

        self.aifi = nn.ModuleList(
            nn.ModuleList(copy_of_layer() for _ in range(num_encoder_layers))
            for _ in self.use_encoder_idx
        )
        num_blocks = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList()
        self.fpn_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.lateral_convs.append(ConvNormAct(hidden_dim, hidden_dim, 1, 1, activation))
            self.fpn_blocks.append(
                CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion, activation)
            )
        self.downsample_convs = nn.ModuleList()
        self.pan_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.downsample_convs.append(ConvNormAct(hidden_dim, hidden_dim, 3, 2, activation))
            self.pan_blocks.append(
                CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion, activation)
            )

    @property
    def num_levels(self) -> int:
        """Output levels, one per input level."""
        return len(self.input_proj)

    def _encode(self, x: Tensor, layers: nn.ModuleList) -> Tensor:
        """AIFI on one level: ``[B, hidden_dim, H, W] -> [B, hidden_dim, H, W]``."""
        height, width = x.shape[2:]
        tokens = x.flatten(2).transpose(1, 2)
        pos = sincos_position_embedding_2d(
            height, width, self.hidden_dim, self.pe_temperature, x.device
        )
        for layer in layers:
            tokens = layer(tokens, pos)
        return tokens.transpose(1, 2).reshape(x.shape).contiguous()

    def forward(self, features: Sequence[Tensor] | Mapping[str, Tensor]) -> list[Tensor]:
        """
        Args:
            features: with ``in_features``, the backbone's ``{name: Tensor[B, C_in, H, W]}``;
                without, per level Tensor[B, C_in_l, H_l, W_l], finest first.

        Returns:
            ``num_levels`` Tensor[B, hidden_dim, H_l, W_l], finest first.
        """
        features = select_levels(features, self.in_features, "HybridEncoder")
        if len(features) != self.num_levels:
            raise ValueError(f"got {len(features)} feature levels, expected {self.num_levels}")
        levels = [proj(x) for proj, x in zip(self.input_proj, features, strict=True)]
        if self.num_encoder_layers > 0:
            for idx, layers in zip(self.use_encoder_idx, self.aifi, strict=True):
                levels[idx] = self._encode(levels[idx], layers)

        # Top-down. The lateral output replaces the coarser map: the bottom-up path fuses it,
        # not the map it was computed from.
        top_down = [levels[-1]]
        for k, idx in enumerate(range(self.num_levels - 1, 0, -1)):
            coarse = self.lateral_convs[k](top_down[0])
            top_down[0] = coarse
            upsampled = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
            top_down.insert(0, self.fpn_blocks[k](torch.cat((upsampled, levels[idx - 1]), dim=1)))

        outputs = [top_down[0]]
        for k in range(self.num_levels - 1):
            downsampled = self.downsample_convs[k](outputs[-1])
            outputs.append(self.pan_blocks[k](torch.cat((downsampled, top_down[k + 1]), dim=1)))
        return outputs
