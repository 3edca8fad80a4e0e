"""AdaMixer's operators: xyzr boxes, adaptive 3-d sampling across levels, adaptive mixing.

Numerics follow the SQR fork of MMDetection (``mmdet/models/roi_heads/bbox_heads/
sampling_3d_operator.py``, ``adaptive_mixing_operator.py`` and ``adamixer_decoder_stage.py`` at
b576a6e), rewritten from typed pieces. Every operator here acts on each query on its own, so a
decoder may put any number of query groups side by side on the query axis and sample the same,
unrepeated feature maps for all of them.

A box in *xyzr* is ``(x, y, z, r)``: centre in pixels, ``z = log2(sqrt(w h))`` (scale) and
``r = log2(h / w)`` (aspect), so ``w = 2^(z - r/2)`` and ``h = 2^(z + r/2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sqr.layers.constants import constant_tensor
from sqr.layers.position_encoding import sine_embedding


def xyzr_to_xyxy(xyzr: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] (x, y, z, r) -> Tensor[..., 4] (x1, y1, x2, y2) in the same pixels."""
    half = xyzr_size(xyzr) / 2
    return torch.cat([xyzr[..., :2] - half, xyzr[..., :2] + half], dim=-1)


def xyzr_size(xyzr: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] xyzr -> Tensor[..., 2] (w, h)."""
    z, r = xyzr[..., 2:3], xyzr[..., 3:4]
    return torch.exp2(torch.cat([z - r / 2, z + r / 2], dim=-1))


def xyxy_to_xyzr(boxes: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] (x1, y1, x2, y2) with positive sides -> Tensor[..., 4] xyzr."""
    wh = boxes[..., 2:] - boxes[..., :2]
    z = wh.prod(-1, keepdim=True).sqrt().log2()
    r = (wh[..., 1:2] / wh[..., 0:1]).log2()
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, z, r], dim=-1)


def refine_xyzr(xyzr: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Apply predicted deltas: the centre moves by ``delta_xy * 2^z``, z and r add theirs.

    Args:
        xyzr: Tensor[..., 4] boxes.
        delta: Tensor[..., 4] (dx, dy, dz, dr).

    Returns:
        Tensor[..., 4] refined xyzr.
    """
    scale = torch.exp2(xyzr[..., 2:3])
    return torch.cat([xyzr[..., :2] + delta[..., :2] * scale, xyzr[..., 2:] + delta[..., 2:]], -1)


def box_iof(boxes: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pairwise intersection over the *first* box's area (mmdet ``bbox_overlaps(mode="iof")``).

    Args:
        boxes: Tensor[..., N, 4] xyxy.
        eps: lower bound of the area (mmdet's).

    Returns:
        Tensor[..., N, N] with ``iof[i, j] = |b_i ∩ b_j| / |b_i|``.
    """
    low = torch.maximum(boxes[..., :, None, :2], boxes[..., None, :, :2])
    high = torch.minimum(boxes[..., :, None, 2:], boxes[..., None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).prod(-1)
    return inter / area.clamp(min=eps)[..., None]


def xyzr_position_embedding(
    xyzr: torch.Tensor, num_feats: int, temperature: float = 10000
) -> torch.Tensor:
    """Sine embedding of xyzr boxes: x and y divided by 1000, z and r as they are.

    Args:
        xyzr: Tensor[..., 4].
        num_feats: channels per coordinate (even); the output has ``4 * num_feats``.
        temperature: frequency base.

    Returns:
        Tensor[..., 4 * num_feats], blocks [x, y, z, r], each with sin/cos interleaved.
    """
    coords = xyzr / constant_tensor(xyzr, [1000.0, 1000.0, 1.0, 1.0])
    return sine_embedding(coords, num_feats, temperature)


def level_weights(z: torch.Tensor, strides: Sequence[int], tau: float = 2.0) -> torch.Tensor:
    """Soft assignment of sampling scales to feature levels.

    Args:
        z: Tensor[...] log2 scale of each point.
        strides: the levels' strides in pixels.
        tau: temperature.

    Returns:
        Tensor[..., L], ``softmax_l(-(z - log2 stride_l)^2 / tau)``.
    """
    levels = constant_tensor(z, strides).log2()
    return torch.softmax(-((z[..., None] - levels) ** 2) / tau, dim=-1)


def _extent(like: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tensor[2] ``(width, height)`` in ``like``'s dtype and device: eagerly copied without
    blocking the host (:func:`constant_tensor`); under ``torch.jit.trace`` computed from the
    traced sizes (0-d tensors), so that the image size remains a dynamic axis of the graph. The
    values are the same whole numbers either way."""
    if torch.jit.is_tracing():
        return torch.stack([torch.as_tensor(width), torch.as_tensor(height)]).to(like)
    return constant_tensor(like, [width, height])


def sampling_3d(
    points: torch.Tensor,
    features: Sequence[torch.Tensor],
    strides: Sequence[int],
    tau: float = 2.0,
) -> torch.Tensor:
    """Sample every point bilinearly on every level and blend the levels by scale.

    Channels are split into ``G`` sampling groups; group ``g`` of a query's points reads only
    channel group ``g``. Points are in pixels of the padded canvas; each level is normalised by
    its own extent ``(W_l * stride_l, H_l * stride_l)``; outside samples read zeros.

    Args:
        points: Tensor[B, N, G, P, 3], (x, y, z) per point of each of N queries.
        features: L maps Tensor[B, C, H_l, W_l]; they are read, never copied per query group.
        strides: L strides.
        tau: temperature of :func:`level_weights`.

    Returns:
        Tensor[B, N, G, P, C / G].
    """
    batch, num_queries, groups, num_points, _ = points.shape
    channels = features[0].shape[1]
    if channels % groups:
        raise ValueError(f"{channels} feature channels do not split into {groups} groups")
    if len(features) != len(strides):
        raise ValueError(f"got {len(features)} feature maps but {len(strides)} strides")
    weights = level_weights(points[..., 2], strides, tau)  # [B, N, G, P, L]
    # [B*G, N, P, ...]: one grid_sample call per level for all queries of all query groups.
    xy = points[..., :2].permute(0, 2, 1, 3, 4).flatten(0, 1)
    weights = weights.permute(0, 2, 1, 3, 4).flatten(0, 1)
    out = None
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        height, width = feature.shape[-2:]
        extent = _extent(xy, height * stride, width * stride)
        grid = xy / extent * 2 - 1
        value = feature.reshape(batch * groups, channels // groups, height, width)
        sampled = F.grid_sample(
            value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [B*G, C/G, N, P]
        sampled = sampled * weights[..., level].unsqueeze(1)
        out = sampled if out is None else out + sampled
    return out.view(batch, groups, channels // groups, num_queries, num_points).permute(
        0, 3, 1, 4, 2
    )


class AdaptiveSampling(nn.Module):
    """Points predicted from each query around its xyzr box, sampled by :func:`sampling_3d`.

    A point is ``(x + dx * w, y + dy * h, z + dz)``; the offsets come from one Linear layer.
    Initially the offsets are the layer's bias: a uniform square grid when ``num_points`` is a
    square number, else U(-0.5, 0.5), with ``dz = -1`` (one level finer than the box).

    Args:
        embed_dim: query channels.
        num_groups: sampling groups G (the feature channels split in G).
        num_points: points per group P.
        strides: strides of the feature levels.
        tau: temperature of the level weights.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_groups: int = 4,
        num_points: int = 32,
        strides: Sequence[int] = (4, 8, 16, 32),
        tau: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.num_points = num_points
        self.strides = tuple(int(s) for s in strides)
        self.tau = tau
        self.offset_generator = nn.Linear(embed_dim, num_groups * num_points * 3)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.offset_generator.weight)
        bias = self.offset_generator.bias.view(self.num_groups, self.num_points, 3)
        side = math.isqrt(self.num_points)
        if side * side == self.num_points:
            centres = torch.linspace(-0.5, 0.5, side + 1)[:-1] + 0.5 / side
            # mmdet writes (row, column) of the grid into (dx, dy): kept for identical points.
            rows = centres.view(-1, 1).expand(side, side).flatten()
            cols = centres.view(1, -1).expand(side, side).flatten()
            bias[..., 0], bias[..., 1] = rows, cols
        else:
            nn.init.uniform_(bias[..., :2], -0.5, 0.5)
        bias[..., 2] = -1.0

    def sample_points(self, query: torch.Tensor, xyzr: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query: Tensor[B, N, C].
            xyzr: Tensor[B, N, 4] boxes.

        Returns:
            Tensor[B, N, G, P, 3] points (x, y in pixels, z log2 scale).
        """
        batch, num_queries = query.shape[:2]
        offsets = self.offset_generator(query).view(
            batch, num_queries, self.num_groups, self.num_points, 3
        )
        size = xyzr_size(xyzr)[:, :, None, None]  # [B, N, 1, 1, 2]
        xy = xyzr[:, :, None, None, :2] + offsets[..., :2] * size
        z = xyzr[:, :, None, None, 2:3] + offsets[..., 2:]
        return torch.cat([xy, z], dim=-1)

    def forward(
        self, query: torch.Tensor, xyzr: torch.Tensor, features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """
        Args:
            query: Tensor[B, N, C] (N may hold several query groups).
            xyzr: Tensor[B, N, 4].
            features: the L maps Tensor[B, C_feat, H_l, W_l].

        Returns:
            Tensor[B, N, G, P, C_feat / G] sampled features.
        """
        return sampling_3d(self.sample_points(query, xyzr), features, self.strides, self.tau)


class AdaptiveMixing(nn.Module):
    """Channel then spatial mixing of each query's samples, with weights generated per query.

    Per query and group: ``x [P, c] @ M [c, c]``, LayerNorm over (P, c), ReLU; then
    ``S [P_out, P] @ x``, LayerNorm over (P_out, c), ReLU; all groups flattened and projected back
    to the query width, added to the query (the residual). ``M`` and ``S`` are one Linear layer of
    the query (zero weight at init, so they start as its bias).

    Args:
        embed_dim: query channels.
        feat_channels: sampled feature channels (split in ``num_groups``).
        num_groups: sampling groups G.
        in_points: sampled points per group P.
        out_points: spatially mixed points per group P_out.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        feat_channels: int = 256,
        num_groups: int = 4,
        in_points: int = 32,
        out_points: int = 128,
    ) -> None:
        super().__init__()
        if feat_channels % num_groups:
            raise ValueError(f"feat_channels {feat_channels} do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.channels = feat_channels // num_groups
        self.in_points = in_points
        self.out_points = out_points
        self.parameter_generator = nn.Linear(
            embed_dim, num_groups * (self.channels**2 + in_points * out_points)
        )
        self.out_proj = nn.Linear(num_groups * out_points * self.channels, embed_dim)
        nn.init.zeros_(self.parameter_generator.weight)

    def forward(self, sampled: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """
        Args:
            sampled: Tensor[B, N, G, P, c] from :class:`AdaptiveSampling`.
            query: Tensor[B, N, C].

        Returns:
            Tensor[B, N, C], the query plus the mixed features.
        """
        batch, num_queries = query.shape[:2]
        params = self.parameter_generator(query).view(batch, num_queries, self.num_groups, -1)
        channel_mix, spatial_mix = params.split(
            [self.channels**2, self.in_points * self.out_points], dim=-1
        )
        channel_mix = channel_mix.reshape(*params.shape[:3], self.channels, self.channels)
        spatial_mix = spatial_mix.reshape(*params.shape[:3], self.out_points, self.in_points)
        x = torch.matmul(sampled, channel_mix)  # [B, N, G, P, c]
        # In-place ReLU: LayerNorm's backward needs its input, not its output. The normalised
        # shapes are ints, not x.shape (which an ONNX trace records as tensors LayerNorm refuses).
        x = F.relu(F.layer_norm(x, (self.in_points, self.channels)), inplace=True)
        x = torch.matmul(spatial_mix, x)  # [B, N, G, P_out, c]
        x = F.relu(F.layer_norm(x, (self.out_points, self.channels)), inplace=True)
        return query + self.out_proj(x.flatten(2))
