"""Multi-scale deformable attention (Deformable-DETR, Zhu et al., ICLR 2021) in plain PyTorch.

Every query predicts, per head, ``P`` sampling offsets around its reference point on each of the
``L`` feature levels and a softmax weight per sample; the output is the weighted sum of the
bilinearly sampled values. Sampling is ``F.grid_sample`` (bilinear, zero padding,
``align_corners=False``), the computation of the official ``ms_deform_attn_core_pytorch``
(fundamentalvision/Deformable-DETR, ``models/ops/functions/ms_deform_attn_func.py``): it runs on
CPU and GPU without a compiled extension. Under autocast (or with a half-precision model) the
sampling runs in float32: the value maps, offsets, locations and weights are upcast, because
locations and bilinear weights in half precision would move the samples.

The module is split in two for query recollection:

* :meth:`MultiScaleDeformableAttention.project_value` projects and masks the value once per
  layer and lays it out as per-level maps;
* ``forward`` lets any number of queries sample those maps. Query groups sit side by side on the
  query axis ``[B, G*Q, C]``; a reference tensor or position embedding given for ``Q`` queries
  is broadcast over the groups (no copy), as SQR needs for static reference points.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sqr.layers.box_ops import at_least_float32
from sqr.layers.constants import constant_tensor


def add_to_groups(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` where ``y`` is given once for all query groups of ``x``.

    Args:
        x: Tensor[B, G*N, C].
        y: Tensor[B, N, C] (broadcast over the G groups) or Tensor[B, G*N, C].

    Returns:
        Tensor[B, G*N, C].
    """
    batch, total, channels = x.shape
    per_group = y.shape[1]
    if per_group == total:
        return x + y
    if total % per_group:
        raise ValueError(f"{total} queries are not a whole number of groups of {per_group}")
    grouped = x.reshape(batch, total // per_group, per_group, channels) + y[:, None]
    return grouped.view(batch, total, channels)


@functools.cache
def _triton_sampler() -> Callable[..., torch.Tensor] | None:
    """The Triton fast path, or None where triton cannot be imported."""
    try:
        from .ms_deform_attn_triton import ms_deform_attn_sample_triton
    except ImportError:
        return None
    return ms_deform_attn_sample_triton


def ms_deform_attn_sample(
    value_maps: Sequence[torch.Tensor],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples of multi-level value maps, in float32.

    On CUDA with triton importable this runs the Triton kernels of
    :mod:`sqr.layers.ms_deform_attn_triton` (their backward keeps no per-level sample tensors;
    ``tests/layers/test_ms_deform_attn_triton.py`` proves them equal to the pure path); anywhere
    else :func:`ms_deform_attn_sample_pytorch`, the reference. Arguments and result are theirs.
    """
    fast = _triton_sampler() if sampling_locations.is_cuda else None
    if fast is not None:
        return fast(value_maps, sampling_locations, attention_weights)
    return ms_deform_attn_sample_pytorch(value_maps, sampling_locations, attention_weights)


def ms_deform_attn_sample_pytorch(
    value_maps: Sequence[torch.Tensor],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples of multi-level value maps, in float32, with
    ``F.grid_sample``: the reference path, on any device.

    Args:
        value_maps: per level Tensor[B*M, D, H_l, W_l] (M heads of D channels; batch-major).
        sampling_locations: Tensor[B, N, M, L, P, 2], (x, y) normalised to [0, 1] over each
            level's (padded) map; samples outside read zeros.
        attention_weights: Tensor[B, N, M, L, P].

    Returns:
        Tensor[B, N, M*D], at least float32: per head, ``sum_{l,p} w * bilinear(value_l,
        location)``.
    """
    batch, num_queries, heads, levels, points, _ = sampling_locations.shape
    if len(value_maps) != levels:
        raise ValueError(f"{len(value_maps)} value maps for sampling locations on {levels} levels")
    head_dim = value_maps[0].shape[1]
    with torch.autocast(device_type=sampling_locations.device.type, enabled=False):
        # grid_sample wants [-1, 1] grids per (image, head): [B*M, N, L, P, 2].
        grids = (2 * at_least_float32(sampling_locations) - 1).transpose(1, 2).flatten(0, 1)
        weights = at_least_float32(attention_weights).transpose(1, 2).flatten(0, 1).unsqueeze(1)
        out = None
        for level, value in enumerate(value_maps):
            sampled = F.grid_sample(
                at_least_float32(value),
                grids[:, :, level],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )  # [B*M, D, N, P]
            # Summed level by level rather than stacked: no [B*M, D, N, L*P] copy.
            term = (sampled * weights[:, :, :, level]).sum(-1)  # [B*M, D, N]
            out = term if out is None else out + term
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``num_levels`` feature maps, with residual and dropout.

    Parameter names and initialisation follow mmcv's ``MultiScaleDeformableAttention`` (the
    SQR recipe's, mmcv 1.3): ``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``.

    Args:
        embed_dim: channels.
        num_heads: attention heads (``embed_dim`` must be divisible by it).
        num_levels: feature levels sampled.
        num_points: samples per head and level.
        dropout: dropout on the output before the residual.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        samples = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dim, samples * 2)
        self.attention_weights = nn.Linear(embed_dim, samples)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's init: offsets start on a ring of directions (one per head), ``k + 1`` steps
        out for point ``k``; uniform attention; xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def project_value(
        self,
        value: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        padding_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Project the value once; every query of the layer then samples the result.

        Args:
            value: Tensor[B, S, C], the flattened levels (S = sum of H_l * W_l).
            spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.
            padding_mask: Bool[B, S], True on padding (those values become zero).

        Returns:
            per level Tensor[B*M, D, H_l, W_l] (M heads of D channels), at least float32.
        """
        batch, length, _ = value.shape
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"got {len(spatial_shapes)} levels, expected {self.num_levels}")
        if sum(h * w for h, w in spatial_shapes) != length:
            raise ValueError(f"spatial_shapes {list(spatial_shapes)} do not cover {length} tokens")
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = at_least_float32(value).view(batch, length, self.num_heads, -1)
        maps, start = [], 0
        for height, width in spatial_shapes:
            level = value[:, start : start + height * width]  # [B, HW, M, D]
            maps.append(level.permute(0, 2, 3, 1).reshape(-1, level.shape[-1], height, width))
            start += height * width
        return maps

    def forward(
        self,
        query: torch.Tensor,
        value_maps: Sequence[torch.Tensor],
        reference_points: torch.Tensor,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: Tensor[B, N, C].
            value_maps: from :meth:`project_value`.
            reference_points: Tensor[B, N_r, L, 2] points (x, y) or Tensor[B, N_r, L, 4] boxes
                (cx, cy, w, h), normalised to each level's padded map; ``N`` must be a multiple of
                ``N_r`` and the references repeat every ``N_r`` queries (groups sharing them).
            query_pos: Tensor[B, N_p, C] added to the query for the offsets and weights (not to
                the residual), broadcast over groups like the references.

        Returns:
            Tensor[B, N, C]: ``query + dropout(output_proj(sampled))``.
        """
        batch, num_queries, _ = query.shape
        q = query if query_pos is None else add_to_groups(query, query_pos)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(q).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(q).view(batch, num_queries, heads, levels * points)
        weights = (
            at_least_float32(weights).softmax(-1).view(batch, num_queries, heads, levels, points)
        )
        locations = self._locations(reference_points, at_least_float32(offsets), value_maps)
        sampled = ms_deform_attn_sample(value_maps, locations, weights).to(query.dtype)
        return query + self.dropout(self.output_proj(sampled))

    def _locations(
        self, reference: torch.Tensor, offsets: torch.Tensor, value_maps: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Sampling locations [B, N, M, L, P, 2] from references [B, N_r, L, 2|4] and offsets."""
        batch, num_queries = offsets.shape[:2]
        shared = reference.shape[1]
        if num_queries % shared:
            raise ValueError(f"{num_queries} queries are not a whole number of {shared}")
        # Groups of queries sharing references: [B, G, N_r, M, L, P, 2] against [B, 1, N_r, ...].
        offsets = offsets.view(batch, num_queries // shared, shared, *offsets.shape[2:])
        reference = at_least_float32(reference)[:, None, :, None, :, None, :]
        if reference.shape[-1] == 2:
            # Offsets are in pixels of each level.
            size = [(m.shape[-1], m.shape[-2]) for m in value_maps]  # (W_l, H_l)
            normalizer = constant_tensor(offsets, size)
            locations = reference + offsets / normalizer[:, None, :]
        elif reference.shape[-1] == 4:
            # Offsets are relative to the box: P steps reach half its width and height.
            locations = reference[..., :2] + offsets / self.num_points * reference[..., 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4, got {tuple(reference.shape)}")
        return locations.view(batch, num_queries, *locations.shape[3:])
