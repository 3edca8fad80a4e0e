"""Multi-scale deformable attention sampling as Triton kernels, registered as the
``torch.library`` op ``sqr::ms_deform_attn``: the fast path of
:func:`sqr.layers.ms_deform_attn.ms_deform_attn_sample`.

It computes what the pure path, :func:`~sqr.layers.ms_deform_attn.ms_deform_attn_sample_pytorch`,
computes: per head, ``sum_{l,p} w * bilinear(value_l, location)`` with ``F.grid_sample``'s
conventions (bilinear, zeros outside the map, ``align_corners=False``, so a location ``u`` in
``[0, 1]`` is pixel coordinate ``u * W_l - 0.5``). The pure path keeps a ``[B*M, D, N, P]`` sample
tensor per level for its backward; here the backward recomputes the samples from what the
forward saved: the value, the locations and the weights.

Layout and precision: the kernels read the value as the projection wrote it, ``[B, S, M, D]``
(``S = sum H_l * W_l``, levels side by side; no copy), so each bilinear corner is one contiguous
read of a head's ``D`` channels. A float16 or bfloat16 value is loaded as it is and every sum runs
in the locations' dtype (float32, or float64 for float64 inputs). The value's gradient is scattered
with atomic adds into a buffer of that dtype (cast to the value's dtype at the end), so its
rounding, like that of the official CUDA extension, depends on the order the GPU runs them in: a
run under ``torch.use_deterministic_algorithms(True)`` takes the pure path instead.

The queries per program (``BLOCK_N``) are autotuned per (heads, channels, power-of-two bucket of
the query count, dtypes); the value-gradient buffer is zeroed between the trial runs
(``reset_to_zero``), as the trials accumulate into it. Under Triton's interpreter
(``TRITON_INTERPRET=1``, how ``tests/layers/test_ms_deform_attn_triton.py`` runs the kernels on
CPU) two of the candidates are tried, timed with the wall clock, as there is no GPU to time them.

The op has a fake (meta) implementation and a registered backward, so ``torch.compile`` traces it
as one node instead of breaking the graph.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl

from sqr.layers.constants import constant_tensor

#: Autotuning candidates: queries per program (a program covers one (image, head) pair and all
#: its D channels) with the warps that suit them.
_CONFIGS = [
    triton.Config({"BLOCK_N": block}, num_warps=warps)
    for block, warps in ((16, 2), (32, 4), (64, 4), (128, 8))
]
_TUNING_KEY = ["num_heads", "head_dim", "query_bucket"]


def _wall_clock_bench(kernel_call: Callable[[], None], quantiles: Sequence[float]) -> list[float]:
    """Autotuning's timer under the interpreter (no GPU events there): one run, in ms."""
    start = time.perf_counter()
    kernel_call()
    return [(time.perf_counter() - start) * 1e3] * len(quantiles)


_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
_BENCH = _wall_clock_bench if _INTERPRETING else None
if _INTERPRETING:
    # Every trial is a full interpreted run: two candidates still exercise the tuning.
    _CONFIGS = _CONFIGS[::2]


@triton.jit
def _pixel(loc, size):
    """A normalised location as a pixel coordinate, in the order of operations of the pure path
    (``2 * loc - 1`` there, then CUDA ``grid_sample``'s ``((g + 1) * size - 1) / 2``)."""
    grid = 2 * loc - 1
    return ((grid + 1) * size - 1) / 2


@triton.jit
def _corner(value_base, start, xi, yi, width, height, offs_d, mask_nd, stride):
    """One bilinear corner (pixel ``(xi, yi)``) of BLOCK_N samples: its flat pixel index, the
    mask of its reads [BLOCK_N, BLOCK_D] (on the map, a query and a channel of the block) and its
    values there in the accumulation dtype of ``xi`` (zero elsewhere: the pure path's padding)."""
    # Compared as floats, so that far-off locations never overflow an integer index.
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    pixel = (
        start + tl.where(inside, yi, 0).to(tl.int32) * width + tl.where(inside, xi, 0).to(tl.int32)
    )
    mask = inside[:, None] & mask_nd
    ptrs = value_base + pixel[:, None].to(tl.int64) * stride + offs_d[None, :]
    return pixel, mask, tl.load(ptrs, mask=mask, other=0.0).to(xi.dtype)


@triton.jit
def _scatter(grad_value_base, pixel, mask, corner_weight, grad_sampled, offs_d, stride):
    """Add one corner's share of the sampled values' gradient to the value's gradient."""
    ptrs = grad_value_base + pixel[:, None].to(tl.int64) * stride + offs_d[None, :]
    tl.atomic_add(ptrs, corner_weight[:, None] * grad_sampled, mask=mask, sem="relaxed")


@triton.autotune(configs=_CONFIGS, key=_TUNING_KEY, do_bench=_BENCH)
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
    query_bucket,  # autotuning key only
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out[b, n, m, :] = sum_{l,p} w * bilinear(value[b, :, m], loc); value [B, S, M, D]."""
    pid_n = tl.program_id(0)
    bm = tl.program_id(1)
    b = bm // num_heads
    m = bm % num_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < num_queries
    mask_nd = mask_n[:, None] & (offs_d < head_dim)[None, :]
    row = ((b * num_queries + offs_n) * num_heads + m).to(tl.int64)  # (b, n, m) flattened
    stride = num_heads * head_dim  # between pixels of the value
    value_base = value_ptr + (b.to(tl.int64) * num_pixels * num_heads + m) * head_dim
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=out_ptr.dtype.element_ty)
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
            _, _, v00 = _corner(value_base, start, x0, y0, width, height, offs_d, mask_nd, stride)
            _, _, v01 = _corner(value_base, start, x1, y0, width, height, offs_d, mask_nd, stride)
            _, _, v10 = _corner(value_base, start, x0, y1, width, height, offs_d, mask_nd, stride)
            _, _, v11 = _corner(value_base, start, x1, y1, width, height, offs_d, mask_nd, stride)
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


@triton.autotune(
    configs=_CONFIGS, key=_TUNING_KEY, reset_to_zero=["grad_value_ptr"], do_bench=_BENCH
)
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
    query_bucket,  # autotuning key only
    LEVELS: tl.constexpr,
    POINTS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
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
    stride = num_heads * head_dim
    offset = (b.to(tl.int64) * num_pixels * num_heads + m) * head_dim
    value_base = value_ptr + offset
    grad_value_base = grad_value_ptr + offset
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
                value_base, start, x0, y0, width, height, offs_d, mask_nd, stride
            )
            p01, m01, v01 = _corner(
                value_base, start, x1, y0, width, height, offs_d, mask_nd, stride
            )
            p10, m10, v10 = _corner(
                value_base, start, x0, y1, width, height, offs_d, mask_nd, stride
            )
            p11, m11, v11 = _corner(
                value_base, start, x1, y1, width, height, offs_d, mask_nd, stride
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
            _scatter(grad_value_base, p00, m00, w00, grad_sampled, offs_d, stride)
            _scatter(grad_value_base, p01, m01, w01, grad_sampled, offs_d, stride)
            _scatter(grad_value_base, p10, m10, w10, grad_sampled, offs_d, stride)
            _scatter(grad_value_base, p11, m11, w11, grad_sampled, offs_d, stride)

            # d sampled / d pixel coordinate, then d pixel / d location = size (2 for the pure
            # path's 2 * loc - 1, size / 2 for grid_sample's unnormalisation).
            d_x = (y1 - y)[:, None] * (v01 - v00) + (y - y0)[:, None] * (v11 - v10)
            d_y = (x1 - x)[:, None] * (v10 - v00) + (x - x0)[:, None] * (v11 - v01)
            grad_x = tl.sum(grad_sampled * d_x, axis=1) * width
            grad_y = tl.sum(grad_sampled * d_y, axis=1) * height
            tl.store(grad_loc_ptr + 2 * sample, grad_x, mask=mask_n)
            tl.store(grad_loc_ptr + 2 * sample + 1, grad_y, mask=mask_n)


def _launch(value: torch.Tensor, locations: torch.Tensor) -> tuple[Callable, dict[str, int]]:
    """The grid (query blocks, image x head; a function of the tuned block) and the sizes every
    kernel takes."""
    batch, num_queries, heads, levels, points, _ = locations.shape
    head_dim = value.shape[-1]

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(num_queries, meta["BLOCK_N"]), batch * heads

    sizes = dict(
        num_queries=num_queries,
        num_heads=heads,
        num_pixels=value.shape[1],
        head_dim=head_dim,
        query_bucket=max(num_queries, 1).bit_length(),
        LEVELS=levels,
        POINTS=points,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return grid, sizes


@torch.library.custom_op("sqr::ms_deform_attn", mutates_args=())
def ms_deform_attn_op(
    value: torch.Tensor, levels: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The forward kernel. value [B, S, M, D] (any float dtype), levels int32 [L, 3] (height,
    width, first pixel), locations [B, N, M, L, P, 2] and weights [B, N, M, L, P] in the
    accumulation dtype (float32 or float64); returns [B, N, M, D] in that dtype."""
    batch, num_queries, heads = locations.shape[:3]
    out = locations.new_empty(batch, num_queries, heads, value.shape[-1])
    if out.numel():
        grid, sizes = _launch(value, locations)
        _ms_deform_attn_fwd_kernel[grid](value, levels, locations, weights, out, **sizes)
    return out


@ms_deform_attn_op.register_fake
def _(value, levels, locations, weights):
    return locations.new_empty(*locations.shape[:3], value.shape[-1])


@torch.library.custom_op("sqr::ms_deform_attn_backward", mutates_args=())
def ms_deform_attn_backward_op(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    levels: torch.Tensor,
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernel: gradients of the value (in its dtype), locations and weights."""
    # Accumulated in the locations' dtype: float16 atomics would lose most small terms.
    grad_value = torch.zeros(value.shape, dtype=locations.dtype, device=value.device)
    grad_locations = torch.zeros_like(locations)
    grad_weights = torch.zeros_like(weights)
    if grad_out.numel():
        grid, sizes = _launch(value, locations)
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
    return grad_value.to(value.dtype), grad_locations, grad_weights


@ms_deform_attn_backward_op.register_fake
def _(grad_out, value, levels, locations, weights):
    return torch.empty_like(value), torch.empty_like(locations), torch.empty_like(weights)


def _setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    value, levels, locations, weights = ctx.saved_tensors
    grads = ms_deform_attn_backward_op(grad_out, value, levels, locations, weights)
    return grads[0], None, grads[1], grads[2]


ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


def _level_table(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Int32 [L, 3]: per level its height, width and first pixel in the flattened value."""
    rows, start = [], 0
    for height, width in spatial_shapes:
        rows.append((height, width, start))
        start += height * width
    return constant_tensor(torch.empty(0, dtype=torch.int32, device=device), rows)


def ms_deform_attn_sample_triton(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`~sqr.layers.ms_deform_attn.ms_deform_attn_sample` with Triton kernels.

    Args:
        value: Tensor[B, S, M, D], the projected value of ``L`` levels side by side (M heads of D
            channels), any float dtype; read in place when contiguous.
        spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.
        sampling_locations: Tensor[B, N, M, L, P, 2], (x, y) normalised to [0, 1] over each
            level's (padded) map; samples outside read zeros.
        attention_weights: Tensor[B, N, M, L, P].

    Returns:
        Tensor[B, N, M*D] in the inputs' common dtype, at least float32.
    """
    batch, num_queries, heads, levels, points, _ = sampling_locations.shape
    if len(spatial_shapes) != levels:
        raise ValueError(f"{len(spatial_shapes)} levels for sampling locations on {levels} levels")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} do not match sampling_locations "
            f"{tuple(sampling_locations.shape)}"
        )
    pixels = sum(h * w for h, w in spatial_shapes)
    if value.dim() != 4 or value.shape[:3] != (batch, pixels, heads):
        # The kernels index the value from these sizes: a mismatch would read out of bounds.
        raise ValueError(
            f"value {tuple(value.shape)} is not [B, S, M, D] with B = {batch}, S = {pixels} "
            f"(spatial_shapes {list(spatial_shapes)}) and M = {heads}"
        )
    dtype = torch.promote_types(sampling_locations.dtype, attention_weights.dtype)
    dtype = torch.promote_types(torch.promote_types(dtype, value.dtype), torch.float32)
    with torch.autocast(device_type=sampling_locations.device.type, enabled=False):
        out = ms_deform_attn_op(
            value.contiguous(),
            _level_table(spatial_shapes, value.device),
            sampling_locations.to(dtype).contiguous(),
            attention_weights.to(dtype).contiguous(),
        )
    return out.view(batch, num_queries, heads * value.shape[-1])
