"""RT-DETRv2's multi-scale deformable attention (lyuwenyu/RT-DETR ``rtdetrv2_pytorch``
``src/zoo/rtdetr/rtdetrv2_decoder.py`` ``MSDeformableAttention`` and ``utils.py``
``deformable_attention_core_func_v2`` at 068dfde, rewritten): a number of sampling points per
level, offsets scaled by ``1 / points`` of their level, half the reference box and
``offset_scale``; ``"default"`` samples bilinearly through
:func:`sqr.layers.ms_deform_attn.ms_deform_attn_sample` (the same function: levels with fewer
points are padded with zero-weight points), ``"discrete"`` reads the nearest cell
(:func:`discrete_sample`, a gather: no bilinear sampler computes it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sqr.layers.box_ops import at_least_float32
from sqr.layers.ms_deform_attn import (
    ProjectedValue,
    add_to_groups,
    level_sizes,
    ms_deform_attn_sample,
    resolve_backend,
)

CROSS_ATTN_METHODS = ("default", "discrete")


class DeformableAttentionV2(nn.Module):
    """RT-DETRv2's multi-scale deformable attention, with residual.

    Parameter names and initialisation are the official ones (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``); the offsets' per-point scale is
    recomputed, not stored.

    Args:
        embed_dim: channels.
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: samples per head and level, one count for every level or one per level.
        method: ``"default"`` (bilinear samples) or ``"discrete"`` (the value of the cell the
            location falls in; the offsets are then frozen, as in RT-DETRv2).
        offset_scale: offsets of ``num_points`` steps reach ``offset_scale`` times the box.
        dropout: on the output before the residual (RT-DETRv2's ``dropout2``).
        backend: sampling backend of the ``"default"`` method
            (:func:`~sqr.layers.ms_deform_attn.resolve_backend`).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int | Sequence[int] = 4,
        method: str = "default",
        offset_scale: float = 0.5,
        dropout: float = 0.0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        points = [num_points] * num_levels if isinstance(num_points, int) else list(num_points)
        if len(points) != num_levels or min(points) < 1:
            raise ValueError(
                f"num_points={num_points!r}: give one positive count, or one per level of "
                f"{num_levels}"
            )
        if method not in CROSS_ATTN_METHODS:
            raise ValueError(f"method={method!r}: choose one of {', '.join(CROSS_ATTN_METHODS)}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = tuple(points)
        self.method = method
        self.offset_scale = offset_scale
        self.backend = resolve_backend(backend)
        total = num_heads * sum(points)
        self.sampling_offsets = nn.Linear(embed_dim, total * 2)
        self.attention_weights = nn.Linear(embed_dim, total)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        scale = [1 / n for n in points for _ in range(n)]
        self.register_buffer("point_scale", torch.tensor(scale).view(-1, 1), persistent=False)
        self.reset_parameters()
        if method == "discrete":
            self.sampling_offsets.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"num_points={self.num_points}, method={self.method!r}, backend={self.backend!r}"

    def reset_parameters(self) -> None:
        """RT-DETRv2's init: offsets on a ring of directions (one per head), ``k + 1`` steps
        out for point ``k`` of each level; uniform attention; xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        steps = torch.cat([torch.arange(1, n + 1) for n in self.num_points]).view(1, -1, 1)
        grid = grid.view(self.num_heads, 1, 2) * steps
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def project_value(
        self, value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> ProjectedValue:
        """The value projection, once per stage: Tensor[B, S, M, D] and the levels' shapes."""
        batch, length, _ = value.shape
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"got {len(spatial_shapes)} levels, expected {self.num_levels}")
        if sum(h * w for h, w in spatial_shapes) != length:
            raise ValueError(f"spatial_shapes {list(spatial_shapes)} do not cover {length} tokens")
        return ProjectedValue(
            self.value_proj(value).view(batch, length, self.num_heads, -1),
            level_sizes(spatial_shapes),
        )

    def forward(
        self,
        query: torch.Tensor,
        value: ProjectedValue,
        reference_boxes: torch.Tensor,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: Tensor[B, N, C].
            value: from :meth:`project_value`.
            reference_boxes: Tensor[B, N, 4] (cx, cy, w, h), normalised, the same on every level.
            query_pos: Tensor[B, N, C] added to the query for the offsets and weights.

        Returns:
            Tensor[B, N, C]: ``query + dropout(output_proj(sampled))``.
        """
        batch, num_queries, _ = query.shape
        if reference_boxes.shape != (batch, num_queries, 4):
            raise ValueError(
                f"reference_boxes must be [B, N, 4] = {[batch, num_queries, 4]}, got "
                f"{list(reference_boxes.shape)}"
            )
        q = query if query_pos is None else add_to_groups(query, query_pos)
        heads, total = self.num_heads, sum(self.num_points)
        offsets = self.sampling_offsets(q).view(batch, num_queries, heads, total, 2)
        weights = self.attention_weights(q).view(batch, num_queries, heads, total)
        weights = at_least_float32(weights).softmax(-1)
        # RT-DETRv2's order: offset * (1 / points) * box size * offset_scale.
        boxes = at_least_float32(reference_boxes)[:, :, None, None]  # [B, N, 1, 1, 4]
        scaled = at_least_float32(offsets) * self.point_scale * boxes[..., 2:] * self.offset_scale
        locations = boxes[..., :2] + scaled  # [B, N, M, P_total, 2]
        if self.method == "discrete":
            sampled = discrete_sample(value, locations, weights, self.num_points)
        else:
            sampled = self._bilinear(value, locations, weights)
        return query + self.dropout(self.output_proj(sampled.to(query.dtype)))

    def _bilinear(
        self, value: ProjectedValue, locations: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """:func:`ms_deform_attn_sample` on levels of ``max(num_points)`` points: a level with
        fewer is padded with points of weight 0, which add exactly nothing."""
        most = max(self.num_points)
        if min(self.num_points) != most:
            pad = [most - n for n in self.num_points]
            locations = torch.cat(
                [
                    nn.functional.pad(part, (0, 0, 0, extra))
                    for part, extra in zip(locations.split(self.num_points, 3), pad, strict=True)
                ],
                dim=3,
            )
            weights = torch.cat(
                [
                    nn.functional.pad(part, (0, extra))
                    for part, extra in zip(weights.split(self.num_points, 3), pad, strict=True)
                ],
                dim=3,
            )
        shape = (*locations.shape[:3], self.num_levels, most)
        return ms_deform_attn_sample(
            *value, locations.view(*shape, 2), weights.view(shape), self.backend
        )


def discrete_sample(
    value: ProjectedValue,
    locations: torch.Tensor,
    weights: torch.Tensor,
    num_points: Sequence[int],
) -> torch.Tensor:
    """RT-DETRv2's ``"discrete"`` sampling: each location reads the cell it falls in.

    The cell is ``trunc(location * (W, H) + 0.5)`` clamped to the map, x to ``W - 1`` and y to
    ``H - 1``. (RT-DETRv2 clamps both to ``H - 1``, marked "FIX ME? for rectangle input"; the
    two agree on the square maps it trains and evaluates on.)

    Args:
        value: Tensor[B, S, M, D] and the levels' shapes.
        locations: Tensor[B, N, M, sum(num_points), 2], (x, y) normalised, level by level.
        weights: Tensor[B, N, M, sum(num_points)].
        num_points: points of each level.

    Returns:
        Tensor[B, N, M*D], at least float32.
    """
    maps, shapes = value
    batch, num_queries, heads, _, _ = locations.shape
    head_dim = maps.shape[-1]
    out, start = None, 0
    parts = zip(
        locations.split(list(num_points), 3), weights.split(list(num_points), 3), strict=True
    )
    for (height, width), (where, weight) in zip(shapes, parts, strict=True):
        level = at_least_float32(maps[:, start : start + height * width]).transpose(1, 2)
        start += height * width
        size = torch.tensor([width, height], dtype=where.dtype, device=where.device)
        cell = (where.detach() * size + 0.5).to(torch.int64)
        x = cell[..., 0].clamp(0, width - 1)
        y = cell[..., 1].clamp(0, height - 1)
        index = (y * width + x).permute(0, 2, 1, 3).reshape(batch, heads, -1)  # [B, M, N*P]
        picked = level.gather(2, index[..., None].expand(-1, -1, -1, head_dim))
        picked = picked.view(batch, heads, num_queries, -1, head_dim)  # [B, M, N, P, D]
        term = (picked * weight.permute(0, 2, 1, 3)[..., None]).sum(3)  # [B, M, N, D]
        out = term if out is None else out + term
    return out.permute(0, 2, 1, 3).reshape(batch, num_queries, heads * head_dim)
