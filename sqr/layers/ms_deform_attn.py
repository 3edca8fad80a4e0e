"""Multi-scale deformable attention (Deformable-DETR, Zhu et al., ICLR 2021).

Every query predicts, per head, ``P`` sampling offsets around its reference point on each of the
``L`` feature levels and a softmax weight per sample; the output is the weighted sum of the
bilinearly sampled values. Sampling is ``F.grid_sample`` (bilinear, zero padding,
``align_corners=False``), the computation of the official ``ms_deform_attn_core_pytorch``
(fundamentalvision/Deformable-DETR, ``models/ops/functions/ms_deform_attn_func.py``): it runs on
CPU and GPU without a compiled extension. On CUDA the Triton kernels of
:mod:`sqr.layers.ms_deform_attn_triton` compute the same (``backend``, ``SQR_MSDA``; see
:func:`ms_deform_attn_sample`). Under autocast (or with a half-precision model) the sampling
accumulates in float32: offsets, locations and weights are float32 and the value is read in its
own dtype and upcast, because locations and bilinear weights in half precision would move the
samples.

The module is split in two for query recollection:

* :meth:`MultiScaleDeformableAttention.project_value` projects and masks the value once per
  layer and keeps it in the projection's layout ``[B, S, M, D]``;
* ``forward`` lets any number of queries sample it. Query groups sit side by side on the
  query axis ``[B, G*Q, C]``; a reference tensor or position embedding given for ``Q`` queries
  is broadcast over the groups (no copy), as SQR needs for static reference points.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

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


#: The values of ``SQR_MSDA`` and of the modules' ``backend`` argument.
BACKENDS = ("auto", "triton", "pytorch")
BACKEND_ENV = "SQR_MSDA"


def resolve_backend(backend: str | None = None) -> str:
    """The sampling backend: ``backend`` when given, else ``$SQR_MSDA``, else ``"auto"``.

    * ``"pytorch"``: :func:`ms_deform_attn_sample_pytorch` everywhere.
    * ``"triton"``: the Triton kernels; raises where they cannot run (see
      :func:`ms_deform_attn_sample`). Off CUDA they run only under ``TRITON_INTERPRET=1``.
    * ``"auto"``: the Triton kernels on CUDA where they can run, else the PyTorch path, with one
      warning per reason.

    Raises:
        ValueError: naming the bad value and where it came from.
    """
    source = "backend" if backend is not None else BACKEND_ENV
    value = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    if value not in BACKENDS:
        raise ValueError(f"{source}={value!r}: choose one of {', '.join(BACKENDS)}")
    return value


class ProjectedValue(NamedTuple):
    """What :meth:`MultiScaleDeformableAttention.project_value` returns: the value once, in the
    projection's layout, for every query of the layer to sample."""

    value: torch.Tensor  #: Tensor[B, S, M, D]: M heads of D channels, the levels side by side.
    #: (H_l, W_l) per level, in the order of S (:func:`level_sizes`: the traced sizes under
    #: ``torch.jit.trace``).
    spatial_shapes: tuple[tuple[int, int], ...]


def _triton_import_error() -> str | None:
    """Why the Triton kernels cannot be imported, or None when they can."""
    try:
        import sqr.layers.ms_deform_attn_triton  # noqa: F401
    except ImportError as e:
        return f"triton cannot be imported ({e})"
    return None


@functools.cache
def _triton_launch_error(
    device: torch.device, dtype: torch.dtype, levels: int, points: int, head_dim: int
) -> str | None:
    """Why the kernels fail on these inputs (compile or launch), or None: a forward and backward
    on a two-query problem of the same dtype, levels, points and channels, once per process."""
    from sqr.layers.ms_deform_attn_triton import ms_deform_attn_sample_triton

    shapes = [(2, 3)] * levels
    try:
        value = torch.ones(1, 6 * levels, 1, head_dim, device=device, dtype=dtype)
        locations = torch.full((1, 2, 1, levels, points, 2), 0.5, device=device)
        weights = torch.ones(1, 2, 1, levels, points, device=device)
        value.requires_grad_(True)
        ms_deform_attn_sample_triton(value, shapes, locations, weights).sum().backward()
    except Exception as e:  # any failure of a compiler or driver: the reason is reported
        return f"the Triton kernels failed on {device} ({type(e).__name__}: {e})"
    return None


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"multi-scale deformable attention: {reason}; using the PyTorch path "
        f"(set {BACKEND_ENV}=pytorch to choose it, or {BACKEND_ENV}=triton to make this an error)",
        RuntimeWarning,
        stacklevel=3,
    )


def _triton_device(x: torch.Tensor) -> bool:
    """Whether ``"auto"`` tries the kernels for ``x``: on CUDA, or anywhere under Triton's
    interpreter (``TRITON_INTERPRET=1``, which runs them on CPU)."""
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@torch.compiler.disable  # runs eagerly (a graph break): a probe and a warning, once each
def why_not_triton(value: torch.Tensor, locations: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on these inputs, or None when they can."""
    if torch.are_deterministic_algorithms_enabled():
        return (
            "deterministic algorithms are requested (torch.use_deterministic_algorithms) and the "
            "Triton backward adds the value's gradient with atomics"
        )
    problem = _triton_import_error()
    if problem is None:
        levels, points = locations.shape[3:5]
        problem = _triton_launch_error(value.device, value.dtype, levels, points, value.shape[-1])
    return problem


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Weighted sum of bilinear samples of multi-level values, accumulated in float32.

    ``backend`` (:func:`resolve_backend`) chooses the Triton kernels of
    :mod:`sqr.layers.ms_deform_attn_triton` (they read ``value`` in place and keep no per-level
    sample tensors for the backward; ``tests/layers/test_ms_deform_attn_triton.py`` proves them
    equal to the pure path) or :func:`ms_deform_attn_sample_pytorch`, the reference. The kernels
    cannot run when triton does not import, when they fail to compile or launch (tried once per
    device, dtype and size class), or under ``torch.use_deterministic_algorithms(True)``: then
    ``"auto"`` warns once, naming the reason, and takes the PyTorch path; ``"triton"`` raises.
    ``"auto"`` off CUDA takes the PyTorch path without a word (except under
    ``TRITON_INTERPRET=1``, where it tries the kernels). Arguments and result are
    :func:`ms_deform_attn_sample_pytorch`'s.

    Raises:
        RuntimeError: ``backend="triton"`` where the kernels cannot run, naming the reason.
    """
    if backend == "triton" or (backend == "auto" and _triton_device(sampling_locations)):
        problem = why_not_triton(value, sampling_locations)
        if problem is None:
            from sqr.layers.ms_deform_attn_triton import ms_deform_attn_sample_triton

            return ms_deform_attn_sample_triton(
                value, spatial_shapes, sampling_locations, attention_weights
            )
        if backend == "triton":
            raise RuntimeError(f"multi-scale deformable attention, backend 'triton': {problem}")
        _warn_once(problem)
    elif backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    return ms_deform_attn_sample_pytorch(
        value, spatial_shapes, sampling_locations, attention_weights
    )


def ms_deform_attn_sample_pytorch(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples of multi-level values, in float32, with
    ``F.grid_sample``: the reference path, on any device.

    Args:
        value: Tensor[B, S, M, D], M heads of D channels on the ``L`` levels side by side
            (S = sum of H_l * W_l).
        spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.
        sampling_locations: Tensor[B, N, M, L, P, 2], (x, y) normalised to [0, 1] over each
            level's (padded) map; samples outside read zeros.
        attention_weights: Tensor[B, N, M, L, P].

    Returns:
        Tensor[B, N, M*D], at least float32: per head, ``sum_{l,p} w * bilinear(value_l,
        location)``.
    """
    batch, num_queries, heads, levels, points, _ = sampling_locations.shape
    if len(spatial_shapes) != levels:
        raise ValueError(f"{len(spatial_shapes)} levels for sampling locations on {levels} levels")
    head_dim = value.shape[-1]
    with torch.autocast(device_type=sampling_locations.device.type, enabled=False):
        # grid_sample wants [-1, 1] grids per (image, head): [B*M, N, L, P, 2].
        grids = (2 * at_least_float32(sampling_locations) - 1).transpose(1, 2).flatten(0, 1)
        weights = at_least_float32(attention_weights).transpose(1, 2).flatten(0, 1).unsqueeze(1)
        out = None
        # split, not slices from a running offset: traced sizes stay sizes (dynamic axes).
        level_values = value.split([height * width for height, width in spatial_shapes], 1)
        for level, (height, width) in enumerate(spatial_shapes):
            # [B, HW, M, D] -> [B*M, D, H, W]: grid_sample's layout (a copy per level).
            level_map = level_values[level].permute(0, 2, 3, 1).reshape(-1, head_dim, height, width)
            sampled = F.grid_sample(
                at_least_float32(level_map),
                grids[:, :, level],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )  # [B*M, D, N, P]
            # Summed level by level rather than stacked: no [B*M, D, N, L*P] copy.
            term = (sampled * weights[:, :, :, level]).sum(-1)  # [B*M, D, N]
            out = term if out is None else out + term
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def level_sizes(spatial_shapes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """``spatial_shapes`` as a tuple of ``(int, int)``; under ``torch.jit.trace`` the sizes stay
    the traced ones (0-d tensors), so that the image size remains a dynamic axis of the graph
    (``int()`` would record each as a constant)."""
    if torch.jit.is_tracing():
        return tuple((h, w) for h, w in spatial_shapes)
    return tuple((int(h), int(w)) for h, w in spatial_shapes)


def level_extents(like: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Tensor[L, 2] of each level's (W_l, H_l) in ``like``'s dtype and device.

    Eagerly the sizes are ints, copied to the device without blocking the host
    (:func:`~sqr.layers.constants.constant_tensor`); under ``torch.jit.trace`` they are the
    traced sizes, stacked so that the graph computes them from the image size. The values are
    the same whole numbers either way (``tests/export`` runs a graph at another size than it
    was traced at against eager PyTorch).
    """
    if torch.jit.is_tracing():
        sizes = [torch.stack([torch.as_tensor(w), torch.as_tensor(h)]) for h, w in spatial_shapes]
        return torch.stack(sizes).to(like)
    return constant_tensor(like, [(w, h) for h, w in spatial_shapes])


def set_backend(model: nn.Module, backend: str | None) -> int:
    """Set the sampling backend of every :class:`MultiScaleDeformableAttention` in ``model``
    (``None``: ``$SQR_MSDA``, else ``"auto"``); returns how many there are.

    Raises:
        ValueError: for a value not in :data:`BACKENDS`.
    """
    resolved = resolve_backend(backend)
    modules = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    for module in modules:
        module.backend = resolved
    return len(modules)


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
        backend: ``"auto"``, ``"triton"`` or ``"pytorch"`` (:func:`resolve_backend`); ``None``
            reads ``$SQR_MSDA`` when the module is built (default ``"auto"``). Detectors set it
            for all their layers with :func:`set_backend` (their ``msda_backend`` argument).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.backend = resolve_backend(backend)
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

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"

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
    ) -> ProjectedValue:
        """Project the value once; every query of the layer then samples the result.

        Args:
            value: Tensor[B, S, C], the flattened levels (S = sum of H_l * W_l).
            spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.
            padding_mask: Bool[B, S], True on padding (those values become zero).

        Returns:
            The projection as Tensor[B, S, M, D] (M heads of D channels; a view, no copy) in the
            projection's dtype, and the levels' shapes.
        """
        batch, length, _ = value.shape
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"got {len(spatial_shapes)} levels, expected {self.num_levels}")
        if sum(h * w for h, w in spatial_shapes) != length:
            raise ValueError(f"spatial_shapes {list(spatial_shapes)} do not cover {length} tokens")
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        return ProjectedValue(
            value.view(batch, length, self.num_heads, -1), level_sizes(spatial_shapes)
        )

    def forward(
        self,
        query: torch.Tensor,
        value: ProjectedValue,
        reference_points: torch.Tensor,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: Tensor[B, N, C].
            value: from :meth:`project_value`.
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
        locations = self._locations(reference_points, at_least_float32(offsets), value)
        sampled = ms_deform_attn_sample(*value, locations, weights, self.backend)
        sampled = sampled.to(query.dtype)
        return query + self.dropout(self.output_proj(sampled))

    def _locations(
        self, reference: torch.Tensor, offsets: torch.Tensor, value: ProjectedValue
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
            normalizer = level_extents(offsets, value.spatial_shapes)
            locations = reference + offsets / normalizer[:, None, :]
        elif reference.shape[-1] == 4:
            # Offsets are relative to the box: P steps reach half its width and height.
            locations = reference[..., :2] + offsets / self.num_points * reference[..., 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4, got {tuple(reference.shape)}")
        return locations.view(batch, num_queries, *locations.shape[3:])
