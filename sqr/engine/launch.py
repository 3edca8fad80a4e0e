"""Start one training process per device, or join a torchrun-launched group.

* ``num_gpus_per_machine * num_machines == 1`` and no torchrun: run ``main_func`` in place.
* Otherwise spawn ``num_gpus_per_machine`` workers on this machine, NCCL on CUDA, gloo on CPU
  (``--num-gpus N train.device=cpu`` gives N CPU processes), all joined through ``dist_url``.
* Under ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK set) the process is already a worker:
  the group is initialised from the environment and nothing is spawned.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _backend(device: str) -> str:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "train.device is 'cuda' but no CUDA device is visible; set train.device=cpu"
            )
        return "nccl"
    return "gloo"


def _running_under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = "auto",
    args: Sequence[Any] = (),
    *,
    device: str = "cuda",
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` on every process of the job.

    Args:
        main_func: the per-process entry point; must be picklable (module level) when spawned.
        num_gpus_per_machine: processes to start on this machine.
        num_machines: machines in the job.
        machine_rank: this machine's index.
        dist_url: rendezvous address, ``tcp://host:port``; "auto" picks a free local port
            (single machine only).
        args: arguments for ``main_func``.
        device: "cuda" (NCCL) or "cpu" (gloo).
        timeout: collective timeout (long evaluations on rank 0 need a generous one).
    """
    if _running_under_torchrun():
        _init_and_run(
            main_func,
            args,
            device,
            timeout,
            init_method="env://",
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
        )
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://<host>:<port>")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if device.startswith("cuda") and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} CUDA devices "
            "are visible (for CPU processes set train.device=cpu)"
        )
    mp.start_processes(
        _spawned_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            args,
            device,
            timeout,
            dist_url,
            world_size,
            num_gpus_per_machine,
            machine_rank,
        ),
        daemon=False,
        start_method="spawn",
    )


def _spawned_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    args: Sequence[Any],
    device: str,
    timeout: datetime.timedelta,
    dist_url: str,
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
) -> None:
    rank = machine_rank * num_gpus_per_machine + local_rank
    # Mirror torchrun's variables so that every helper finds the same information either way.
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(num_gpus_per_machine),
    )
    _init_and_run(
        main_func,
        args,
        device,
        timeout,
        init_method=dist_url,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
    )


def _init_and_run(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    device: str,
    timeout: datetime.timedelta,
    *,
    init_method: str,
    rank: int,
    world_size: int,
    local_rank: int,
) -> None:
    backend = _backend(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend, init_method=init_method, world_size=world_size, rank=rank, timeout=timeout
        )
    except Exception as e:
        raise RuntimeError(f"process group init failed at {init_method} (rank {rank}): {e}") from e
    try:
        dist.barrier()
        main_func(*args)
    finally:
        dist.destroy_process_group()
