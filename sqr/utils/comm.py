"""Small helpers around ``torch.distributed`` that also work without it.

Every function behaves as a single process of rank 0 when no process group is initialised,
so library code can call them unconditionally.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    """Rank within this machine, as set by :func:`sqr.engine.launch` or torchrun."""
    import os

    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all ranks; a no-op for a single process."""
    if get_world_size() > 1:
        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank.

    Returns:
        One entry per rank, in rank order (``[obj]`` for a single process).
    """
    if get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (out of place); identity for a single process."""
    if get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_dict_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of Python floats over ranks (for logging only)."""
    if get_world_size() == 1:
        return values
    keys = sorted(values)
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        stacked = stacked.cuda()
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked = (stacked / get_world_size()).cpu()
    return {k: float(v) for k, v in zip(keys, stacked, strict=True)}
