"""Multi-scale deformable attention sampling as Triton kernels: the CUDA fast path of
:func:`sqr.layers.ms_deform_attn.ms_deform_attn_sample`.

It computes what the pure path, :func:`~sqr.layers.ms_deform_attn.ms_deform_attn_sample_pytorch`,
computes: per head, ``sum_{l,p} w * bilinear(value_l, location)`` with ``F.grid_sample``'s
conventions (bilinear, zeros outside the map, ``align_corners=False``, so a location ``u`` in
``[0, 1]`` is pixel coordinate ``u * W_l - 0.5``), in float32 (float64 inputs stay float64).
The pure path keeps a ``[B*M, D, N, P]`` sample tensor per level for its backward; here the
backward recomputes the samples from what the forward saved: the value, the locations and the
weights. The gradient of the value is scattered with atomic adds, so its float32 rounding, like
that of the official CUDA extension, depends on the order the GPU runs them in.

Layout: the per-level maps ``[B*M, D, H_l, W_l]`` are copied once per call into one
channels-last tensor ``[B*M, S, D]`` (``S = sum H_l * W_l``), so that each bilinear corner is one
contiguous read of a head's ``D`` channels. The kernels run on CUDA, and on CPU under Triton's
interpreter (``TRITON_INTERPRET=1``), which is how ``tests/layers/test_ms_deform_attn_triton.py``
proves them equal to the pure path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from sqr.layers.constants import constant_tensor

# Queries per program; a program covers one (image, head) pair and all its D channels.
BLOCK_QUERIES = 64


@triton.jit
def _pixel(loc, size):
    """A normalised location as a pixel coordinate, in the order of operations of the pure path
    (``2 * loc - 1`` there, then CUDA ``grid_sample``'s ``((g + 1) * size - 1) / 2``)."""
    grid = 2 * loc - 1
    return ((grid + 1) * size - 1) / 2


@triton.jit
def _corner(value_base, start, xi, yi, width, height, offs_d, mask_nd, head_dim):
    """One bilinear corner (pixel ``(xi, yi)``) of BLOCK_N samples: its flat pixel index, the
    mask of its reads [BLOCK_N, BLOCK_D] (on the map, a query and a channel of the block) and its
    values there (zero elsewhere: the pure path's zero padding)."""
    # Compared as floats, so that far-off locations never overflow an integer index.
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    pixel = (
        start + tl.where(inside, yi, 0).to(tl.int32) * width + tl.where(inside, xi, 0).to(tl.int32)
    )
    mask = inside[:, None] & mask_nd
    ptrs = value_base + pixel[:, None].to(tl.int64) * head_dim + offs_d[None, :]
    return pixel, mask, tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _scatter(grad_value_base, pixel, mask, corner_weight, grad_sampled, offs_d, head_dim):
    """Add one corner's share of the sampled values' gradient to the value's gradient."""
    ptrs = grad_value_base + pixel[:, None].to(tl.int64) * head_dim + offs_d[None, :]
    tl.atomic_add(ptrs, corner_weight[:, None] * grad_sampled, mask=mask, sem="relaxed")


@triton.jit
def _ms_deform_attn_fwd_kernel(
    value_ptr,
    levels_ptr,
    loc_ptr,
    weight_ptr,
    out_ptr,
    num_queries,
    num_heads,
    num_pixels,
    head_dim,
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, n, m, :] = sum_{l,p} w * bilinear(value[b*M + m], loc); see the module docstring
    for the layouts."""
    pid_n = tl.program_id(0)
    bm = tl.program_id(1)
    b = bm // num_heads
    m = bm % num_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < num_queries
    mask_nd = mask_n[:, None] & (offs_d < head_dim)[None, :]
    row = ((b * num_queries + offs_n) * num_heads + m).to(tl.int64)  # (b, n, m) flattened
    value_base = value_ptr + bm.to(tl.int64) * num_pixels * head_dim
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=value_ptr.dtype.element_ty)
    for level in range(LEVELS):
        height = tl.load(levels_ptr + 3 * level)
        width = tl.load(levels_ptr + 3 * level + 1)
        start = tl.load(levels_ptr + 3 * level + 2)
        for point in range(POINTS):
            sample = row * (LEVELS * POINTS) + level * POINTS + point
            x = _pixel(tl.load(loc_ptr + 2 * sample, mask=mask_n, other=0.0), width)
            y = _pixel(tl.load(loc_ptr + 2 * sample + 1, mask=mask_n, other=0.0), height)
            weight = tl.load(weight_ptr + sample, mask=mask_n, other=0.0)
            x0, y0 = tl.floor(x), tl.floor(y)
            x1, y1 = x0 + 1, y0 + 1
            _, _, v00 = _corner(value_base, start, x0, y0, width, height, offs_d, mask_nd, head_dim)
            _, _, v01 = _corner(value_base, start, x1, y0, width, height, offs_d, mask_nd, head_dim)
            _, _, v10 = _corner(value_base, start, x0, y1, width, height, offs_d, mask_nd, head_dim)
            _, _, v11 = _corner(value_base, start, x1, y1, width, height, offs_d, mask_nd, head_dim)
            # grid_sample's corner weights, written as it writes them (nw, ne, sw, se).
            sampled = (
                ((x1 - x) * (y1 - y))[:, None] * v00
                + ((x - x0) * (y1 - y))[:, None] * v01
                + ((x1 - x) * (y - y0))[:, None] * v10
                + ((x - x0) * (y - y0))[:, None] * v11
            )
            acc += weight[:, None] * sampled
    out_ptrs = out_ptr + row[:, None] * head_dim + offs_d[None, :]
    tl.store(out_ptrs, acc, mask=mask_nd)


@triton.jit
def _ms_deform_attn_bwd_kernel(
    value_ptr,
    levels_ptr,
    loc_ptr,
    weight_ptr,
    grad_out_ptr,
    grad_value_ptr,
    grad_loc_ptr,
    grad_weight_ptr,
    num_queries,
    num_heads,
    num_pixels,
    head_dim,
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradients of the forward kernel's output for the value (scattered with atomic adds, as
    samples of many queries share pixels), the locations and the weights (one writer each)."""
    pid_n = tl.program_id(0)
    bm = tl.program_id(1)
    b = bm // num_heads
    m = bm % num_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < num_queries
    mask_nd = mask_n[:, None] & (offs_d < head_dim)[None, :]
    row = ((b * num_queries + offs_n) * num_heads + m).to(tl.int64)
    value_base = value_ptr + bm.to(tl.int64) * num_pixels * head_dim
    grad_value_base = grad_value_ptr + bm.to(tl.int64) * num_pixels * head_dim
    grad_out = tl.load(
        grad_out_ptr + row[:, None] * head_dim + offs_d[None, :], mask=mask_nd, other=0.0
    )
    for level in range(LEVELS):
        height = tl.load(levels_ptr + 3 * level)
        width = tl.load(levels_ptr + 3 * level + 1)
        start = tl.load(levels_ptr + 3 * level + 2)
        for point in range(POINTS):
            sample = row * (LEVELS * POINTS) + level * POINTS + point
            x = _pixel(tl.load(loc_ptr + 2 * sample, mask=mask_n, other=0.0), width)
            y = _pixel(tl.load(loc_ptr + 2 * sample + 1, mask=mask_n, other=0.0), height)
            weight = tl.load(weight_ptr + sample, mask=mask_n, other=0.0)
            x0, y0 = tl.floor(x), tl.floor(y)
            x1, y1 = x0 + 1, y0 + 1
            p00, m00, v00 = _corner(
                value_base, start, x0, y0, width, height, offs_d, mask_nd, head_dim
            )
            p01, m01, v01 = _corner(
                value_base, start, x1, y0, width, height, offs_d, mask_nd, head_dim
            )
            p10, m10, v10 = _corner(
                value_base, start, x0, y1, width, height, offs_d, mask_nd, head_dim
            )
            p11, m11, v11 = _corner(
                value_base, start, x1, y1, width, height, offs_d, mask_nd, head_dim
            )
            w00 = (x1 - x) * (y1 - y)
            w01 = (x - x0) * (y1 - y)
            w10 = (x1 - x) * (y - y0)
            w11 = (x - x0) * (y - y0)
            sampled = (
                w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            )
            tl.store(grad_weight_ptr + sample, tl.sum(grad_out * sampled, axis=1), mask=mask_n)

            grad_sampled = weight[:, None] * grad_out
            _scatter(grad_value_base, p00, m00, w00, grad_sampled, offs_d, head_dim)
            _scatter(grad_value_base, p01, m01, w01, grad_sampled, offs_d, head_dim)
            _scatter(grad_value_base, p10, m10, w10, grad_sampled, offs_d, head_dim)
            _scatter(grad_value_base, p11, m11, w11, grad_sampled, offs_d, head_dim)

            # d sampled / d pixel coordinate, then d pixel / d location = size (2 for the pure
            # path's 2 * loc - 1, size / 2 for grid_sample's unnormalisation).
            d_x = (y1 - y)[:, None] * (v01 - v00) + (y - y0)[:, None] * (v11 - v10)
            d_y = (x1 - x)[:, None] * (v10 - v00) + (x - x0)[:, None] * (v11 - v01)
            grad_x = tl.sum(grad_sampled * d_x, axis=1) * width
            grad_y = tl.sum(grad_sampled * d_y, axis=1) * height
            tl.store(grad_loc_ptr + 2 * sample, grad_x, mask=mask_n)
            tl.store(grad_loc_ptr + 2 * sample + 1, grad_y, mask=mask_n)


def _launch_shape(
    value: torch.Tensor, locations: torch.Tensor
) -> tuple[tuple[int, int], dict[str, int]]:
    """The grid (query blocks, image x head) and the sizes every kernel takes."""
    batch, num_queries, heads, levels, points, _ = locations.shape
    head_dim = value.shape[-1]
    grid = (triton.cdiv(num_queries, BLOCK_QUERIES), batch * heads)
    sizes = dict(
        num_queries=num_queries,
        num_heads=heads,
        num_pixels=value.shape[1],
        head_dim=head_dim,
        LEVELS=levels,
        POINTS=points,
        BLOCK_N=BLOCK_QUERIES,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return grid, sizes


class _MSDeformAttnSample(torch.autograd.Function):
    """Sampling of the flattened value [B*M, S, D]; saves only its inputs (value, level table,
    locations, weights) and recomputes the samples in the backward."""

    @staticmethod
    def forward(
        ctx,
        value: torch.Tensor,
        levels: torch.Tensor,
        locations: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        batch, num_queries, heads = locations.shape[:3]
        out = value.new_empty(batch, num_queries, heads, value.shape[-1])
        grid, sizes = _launch_shape(value, locations)
        if out.numel():
            _ms_deform_attn_fwd_kernel[grid](value, levels, locations, weights, out, **sizes)
        ctx.save_for_backward(value, levels, locations, weights)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        value, levels, locations, weights = ctx.saved_tensors
        grad_value = torch.zeros_like(value)
        grad_locations = torch.zeros_like(locations)
        grad_weights = torch.zeros_like(weights)
        grid, sizes = _launch_shape(value, locations)
        if grad_out.numel():
            _ms_deform_attn_bwd_kernel[grid](
                value,
                levels,
                locations,
                weights,
                grad_out.contiguous(),
                grad_value,
                grad_locations,
                grad_weights,
                **sizes,
            )
        return grad_value, None, grad_locations, grad_weights


def _level_table(value_maps: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Int32 [L, 3]: per level its height, width and first pixel in the flattened value."""
    rows, start = [], 0
    for value in value_maps:
        height, width = value.shape[-2:]
        rows.append((height, width, start))
        start += height * width
    return constant_tensor(torch.empty(0, dtype=torch.int32, device=device), rows)


def ms_deform_attn_sample_triton(
    value_maps: Sequence[torch.Tensor],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`~sqr.layers.ms_deform_attn.ms_deform_attn_sample` with Triton kernels.

    Args:
        value_maps: per level Tensor[B*M, D, H_l, W_l] (M heads of D channels; batch-major).
        sampling_locations: Tensor[B, N, M, L, P, 2], (x, y) normalised to [0, 1] over each
            level's (padded) map; samples outside read zeros.
        attention_weights: Tensor[B, N, M, L, P].

    Returns:
        Tensor[B, N, M*D] in the inputs' common dtype, at least float32.
    """
    batch, num_queries, heads, levels, points, _ = sampling_locations.shape
    if len(value_maps) != levels:
        raise ValueError(f"{len(value_maps)} value maps for sampling locations on {levels} levels")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} do not match sampling_locations "
            f"{tuple(sampling_locations.shape)}"
        )
    head_dim = value_maps[0].shape[1]
    if any(v.dim() != 4 or v.shape[:2] != (batch * heads, head_dim) for v in value_maps):
        # The kernels index the maps from these sizes: a mismatch would read out of bounds.
        raise ValueError(
            f"value maps {[tuple(v.shape) for v in value_maps]} are not [B*M, D, H_l, W_l] with "
            f"B*M = {batch} * {heads} and one D"
        )
    dtype = torch.promote_types(sampling_locations.dtype, attention_weights.dtype)
    for value in value_maps:
        dtype = torch.promote_types(dtype, value.dtype)
    dtype = torch.promote_types(dtype, torch.float32)
    with torch.autocast(device_type=sampling_locations.device.type, enabled=False):
        # [B*M, D, H_l, W_l] per level -> [B*M, S, D]: channels last, levels side by side.
        value = torch.cat([v.to(dtype).flatten(2).transpose(1, 2) for v in value_maps], 1)
        out = _MSDeformAttnSample.apply(
            value,
            _level_table(value_maps, value.device),
            sampling_locations.to(dtype).contiguous(),
            attention_weights.to(dtype).contiguous(),
        )
    return out.view(batch, num_queries, heads * head_dim)
