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


def gather(obj: Any, dst: int = 0) -> list[Any]:
    """Gather a picklable object from every rank on rank ``dst`` only (evaluation results:
    every rank holding every rank's predictions would multiply their memory by the world size).

    Returns:
        On ``dst``, one entry per rank in rank order (``[obj]`` for a single process);
        elsewhere ``[]``.
    """
    if get_world_size() == 1:
        return [obj]
    gathered: list[Any] | None = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, gathered, dst=dst)
    return gathered if gathered is not None else []


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (one decision taken by one rank)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (out of place); identity for a single process."""
    if get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
