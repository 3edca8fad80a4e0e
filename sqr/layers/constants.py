"""Small constant tensors built on the device without a host-to-device copy."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def constant_tensor(
    like: torch.Tensor, values: Sequence[Sequence[float]] | Sequence[float]
) -> torch.Tensor:
    """``values`` as a tensor of ``like``'s dtype and device.

    ``torch.tensor(values, device=cuda)`` copies from pageable host memory, which synchronises
    the host with the device; here every element is a fill instead (a kernel launch each, no
    synchronisation), for the few per-level sizes the attention layers need in every call.

    Args:
        like: gives dtype and device.
        values: a list of numbers, or a list of equally long lists of numbers.

    Returns:
        Tensor[len(values)] or Tensor[len(values), len(values[0])].
    """
    nested = bool(values) and isinstance(values[0], Sequence)
    rows = [list(v) for v in values] if nested else [[v] for v in values]
    out = like.new_empty(len(rows), len(rows[0]) if rows else 0)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            out[i, j] = value
    return out if nested else out.view(-1)
