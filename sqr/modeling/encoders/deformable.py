"""Deformable-DETR's encoder, and the flattening of the feature levels it reads.

Numerics follow the SQR recipe's mmdet 2.12 / mmcv 1.3 Deformable-DETR
(``mmdet/models/utils/transformer.py`` of Fangyi-Chen/SQR at b576a6e), rewritten batch-first:
post-norm MSDA layers whose reference points are the token centres, normalised by each level's
valid (unpadded) region. DINO uses the same encoder and level flattening.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sqr.layers.mlp import FFN
from sqr.layers.ms_deform_attn import MultiScaleDeformableAttention


def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
    """Share of each padded map that holds the image.

    Args:
        mask: Bool[B, H, W], True on padding.

    Returns:
        Tensor[B, 2] as (width ratio, height ratio).
    """
    valid_h = (~mask[:, :, 0]).sum(1).float() / mask.shape[1]
    valid_w = (~mask[:, 0, :]).sum(1).float() / mask.shape[2]
    return torch.stack([valid_w, valid_h], -1)


class FlatLevels(NamedTuple):
    """Multi-scale feature maps as the encoder takes them.

    Attributes:
        memory: Tensor[B, S, C], the levels flattened and joined, finest first.
        pos: Tensor[B, S, C], each token's sine position plus its level's embedding.
        padding_mask: Bool[B, S], True on padding.
        spatial_shapes: (H_l, W_l) per level.
        ratios: Tensor[B, L, 2] valid ratios (w, h) per level.
    """

    memory: torch.Tensor
    pos: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: list[tuple[int, int]]
    ratios: torch.Tensor


def flatten_levels(
    levels: Sequence[torch.Tensor],
    padding: torch.Tensor,
    position_embedding: nn.Module,
    level_embeds: torch.Tensor,
) -> FlatLevels:
    """Flatten the neck's levels for the encoder, with positions and per-level padding masks.

    Args:
        levels: per level Tensor[B, C, H_l, W_l].
        padding: Bool[B, H, W] padding mask of the batched images, True on padding.
        position_embedding: maps a mask [B, H_l, W_l] to Tensor[B, C, H_l, W_l].
        level_embeds: Tensor[L, C], added to the positions of each level's tokens.
    """
    masks = [F.interpolate(padding[None].float(), size=x.shape[-2:])[0].bool() for x in levels]
    pos = [
        position_embedding(mask).flatten(2).transpose(1, 2) + level_embeds[i]
        for i, mask in enumerate(masks)
    ]
    return FlatLevels(
        memory=torch.cat([x.flatten(2).transpose(1, 2) for x in levels], 1),
        pos=torch.cat(pos, 1),
        padding_mask=torch.cat([mask.flatten(1) for mask in masks], 1),
        spatial_shapes=[(x.shape[-2], x.shape[-1]) for x in levels],
        ratios=torch.stack([valid_ratios(mask) for mask in masks], 1),
    )


def encoder_reference_points(
    spatial_shapes: Sequence[tuple[int, int]], ratios: torch.Tensor
) -> torch.Tensor:
    """Every token's pixel centre, normalised by its level's valid region, on every level.

    Args:
        spatial_shapes: (H_l, W_l) per level.
        ratios: Tensor[B, L, 2] valid ratios (w, h).

    Returns:
        Tensor[B, S, L, 2] (x, y), S = sum of H_l * W_l.
    """
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=ratios.device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=ratios.device) + 0.5,
            indexing="ij",
        )
        y = ys.reshape(-1)[None] / (ratios[:, None, level, 1] * height)
        x = xs.reshape(-1)[None] / (ratios[:, None, level, 0] * width)
        points.append(torch.stack((x, y), -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        feedforward_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dim, num_heads, num_levels, num_points, dropout
        )
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout, "relu")
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        value_maps = self.self_attn.project_value(x, spatial_shapes, padding_mask)
        x = self.norm1(self.self_attn(x, value_maps, reference_points, pos))
        return self.norm2(x + self.ffn(x))


class DeformableDetrEncoder(nn.Module):
    """Deformable-DETR encoder: every token attends to points around itself on all levels.

    Args:
        num_layers: encoder layers.
        embed_dim: channels.
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: samples per head and level.
        feedforward_dim: FFN hidden channels.
        dropout: dropout of attention output and FFN.
    """

    def __init__(
        self,
        num_layers: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(
                embed_dim, num_heads, num_levels, num_points, feedforward_dim, dropout
            )
            for _ in range(num_layers)
        )
        self.num_levels = num_levels

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        ratios: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            x: Tensor[B, S, C] flattened levels.
            pos: Tensor[B, S, C] position plus level embedding.
            padding_mask: Bool[B, S], True on padding.
            spatial_shapes: (H_l, W_l) per level.
            ratios: Tensor[B, L, 2] valid ratios (w, h).

        Returns:
            Tensor[B, S, C] memory.
        """
        reference_points = encoder_reference_points(spatial_shapes, ratios)
        for layer in self.layers:
            x = layer(x, pos, reference_points, padding_mask, spatial_shapes)
        return x
