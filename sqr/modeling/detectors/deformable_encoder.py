"""Deformable-DETR's encoder, and the two-stage variant's proposals from its output.

Numerics follow the SQR recipe's mmdet 2.12 / mmcv 1.3 Deformable-DETR
(``mmdet/models/utils/transformer.py`` of Fangyi-Chen/SQR at b576a6e), rewritten batch-first:
post-norm MSDA layers whose reference points are the token centres, normalised by each level's
valid (unpadded) region. DINO uses the same encoder, level flattening and token proposals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sqr.layers.mlp import FFN
from sqr.layers.ms_deform_attn import MultiScaleDeformableAttention
from sqr.layers.position_encoding import sine_embedding


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


def token_proposals(
    memory: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage proposals: a box per encoder token (its centre, side ``0.05 * 2**level`` of the
    valid image).

    Args:
        memory: Tensor[B, S, C] encoder output.
        padding_mask: Bool[B, S], True on padding.
        spatial_shapes: (H_l, W_l) per level.

    Returns:
        ``(memory, proposals)``: the memory zeroed where a token proposes nothing (padding, or
        a box too close to the border), Tensor[B, S, C]; the boxes in logit space, +inf there,
        Tensor[B, S, 4] (cx, cy, w, h).
    """
    batch = memory.shape[0]
    proposals, start = [], 0
    for level, (height, width) in enumerate(spatial_shapes):
        mask = padding_mask[:, start : start + height * width].view(batch, height, width)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=memory.device),
            torch.arange(width, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([xs, ys], -1)  # [H, W, 2]
        scale = torch.stack([valid_w, valid_h], -1).view(batch, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
        size = torch.full_like(grid, 0.05 * 2.0**level)
        proposals.append(torch.cat((grid, size), -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = padding_mask.unsqueeze(-1) | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    return memory.masked_fill(invalid, 0.0), proposals


class TwoStageProposals(nn.Module):
    """Two-stage Deformable-DETR: every encoder token proposes a box around itself; the
    ``num_proposals`` tokens scoring highest on class 0 give the decoder its initial boxes
    (detached) and, through a sine embedding of those boxes, its queries.

    The class and box heads are the detector's extra (last) heads, passed to ``forward``.

    Args:
        embed_dim: channels.
        temperature: frequency base of the boxes' sine embedding.
    """

    def __init__(self, embed_dim: int = 256, temperature: float = 10000) -> None:
        super().__init__()
        self.enc_output = nn.Linear(embed_dim, embed_dim)
        self.enc_output_norm = nn.LayerNorm(embed_dim)
        self.pos_trans = nn.Linear(2 * embed_dim, 2 * embed_dim)
        self.pos_trans_norm = nn.LayerNorm(2 * embed_dim)
        self.embed_dim = embed_dim
        self.temperature = temperature

    def forward(
        self,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        class_head: nn.Module,
        box_head: nn.Module,
        num_proposals: int,
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            memory: Tensor[B, S, C] encoder output.
            padding_mask: Bool[B, S], True on padding.
            spatial_shapes: (H_l, W_l) per level.
            class_head: maps [.., C] to class logits [.., K].
            box_head: maps [.., C] to box deltas [.., 4] (logit space).
            num_proposals: proposals kept (the decoder's queries).

        Returns:
            ``(logits, boxes, content, query_pos, reference)``: every token's class logits
            Tensor[B, S, K] and box Tensor[B, S, 4] (normalised cxcywh; 1 where the token is
            padding or too close to the border), the decoder's initial content and position
            Tensor[B, Q, C] and its reference boxes Tensor[B, Q, 4] (sigmoid space, detached).
        """
        if num_proposals > memory.shape[1]:
            raise ValueError(
                f"two-stage needs at least {num_proposals} encoder tokens, got {memory.shape[1]}"
            )
        output_memory, proposals = token_proposals(memory, padding_mask, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        logits = class_head(output_memory)
        coords = box_head(output_memory) + proposals  # logit space; +inf where invalid
        top = logits[..., 0].topk(num_proposals, dim=1)[1]
        top_coords = torch.gather(coords, 1, top[..., None].expand(-1, -1, 4)).detach()
        embedded = self.pos_trans_norm(self.pos_trans(self._sine(top_coords)))
        query_pos, content = embedded.split(self.embed_dim, dim=-1)
        return logits, coords.sigmoid(), content, query_pos, top_coords.sigmoid()

    def _sine(self, coords: torch.Tensor) -> torch.Tensor:
        """[B, Q, 4] logit-space boxes -> [B, Q, 4 * C / 2]: per coordinate (x, y, w, h in
        that order) C / 2 interleaved sin/cos features of ``2 pi sigmoid(coord)``."""
        return sine_embedding(
            coords.sigmoid() * (2 * math.pi), self.embed_dim // 2, self.temperature
        )
