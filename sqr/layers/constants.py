"""Host values on the device without a host-device synchronisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` (a CPU tensor) on ``device`` in one copy that does not stall the host.

    ``tensor.to(cuda)`` from pageable host memory makes the host wait for the device; from
    pinned memory with ``non_blocking=True`` it is queued like a kernel. The pinned buffer is
    PyTorch's caching host allocator's, which keeps it until the queued copy has run.

    Args:
        host: a CPU tensor.
        device: where it goes; on a CPU device ``host`` itself is returned.

    Returns:
        A tensor on ``device`` with ``host``'s values, shape and dtype.
    """
    if device.type != "cuda":
        return host.to(device)
    pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True).copy_(host)
    return pinned.to(device, non_blocking=True)


def constant_tensor(
    like: torch.Tensor,
    values: Sequence[Sequence[float]] | Sequence[float],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``values`` as a tensor on ``like``'s device, built on the host and copied in one
    non-blocking launch (:func:`to_device_async`).

    Args:
        like: gives the device, and the dtype unless ``dtype`` is given.
        values: a list of numbers, or a list of equally long lists of numbers.
        dtype: the dtype, if not ``like``'s.

    Returns:
        Tensor[len(values)] or Tensor[len(values), len(values[0])].
    """
    host = torch.tensor(values, dtype=like.dtype if dtype is None else dtype)
    return to_device_async(host, like.device)
