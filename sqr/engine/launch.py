"""Start one training process per device, or join a torchrun-launched group.

* ``num_gpus_per_machine * num_machines == 1`` and no torchrun: run ``main_func`` in place.
* Otherwise spawn ``num_gpus_per_machine`` workers on this machine, NCCL on CUDA, gloo on CPU
  (``--num-gpus N train.device=cpu`` gives N CPU processes), all joined through ``dist_url``.
  With ``dist_url="auto"`` the launcher itself serves the rendezvous store for the whole run.
  Spawned workers exit as soon as their launcher dies, however it dies.
* Under ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK set) the process is already a worker:
  the group is initialised from the environment and nothing is spawned.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sqr.utils.env import share_cpu_threads

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
    allow_oversubscribe: bool = False,
) -> None:
    """Run ``main_func(*args)`` on every process of the job.

    Args:
        main_func: the per-process entry point; must be picklable (module level) when spawned.
        num_gpus_per_machine: processes to start on this machine.
        num_machines: machines in the job.
        machine_rank: this machine's index.
        dist_url: rendezvous address, ``tcp://host:port``; "auto": this process serves the
            rendezvous on a free local port until the workers finish (single machine only).
        args: arguments for ``main_func``.
        device: "cuda" (NCCL) or "cpu" (gloo).
        timeout: collective timeout (long evaluations on rank 0 need a generous one).
        allow_oversubscribe: start more CPU processes than this machine has cores.

    Raises:
        ValueError: fewer than one process or machine, a machine rank out of range, more CUDA
            processes than devices, or more CPU processes than cores without
            ``allow_oversubscribe``.
    """
    if _running_under_torchrun():
        _init_and_run(
            main_func,
            args,
            device,
            timeout,
            init_method="env://",
            join_launcher_store=False,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
        )
        return
    if num_gpus_per_machine < 1:
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine}: the processes per machine must be at least 1"
        )
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"--num-machines {num_machines} --machine-rank {machine_rank}: need at least 1 "
            "machine and 0 <= machine rank < machines"
        )
    if not device.startswith("cuda"):
        _check_cpu_processes(num_gpus_per_machine, allow_oversubscribe)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    launcher_store = None
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://<host>:<port>")
        # Bound here and held until this call returns, after the workers: a port found free,
        # released and bound again by rank 0 seconds later can be taken by another process.
        launcher_store = dist.TCPStore(
            "127.0.0.1", 0, is_master=True, timeout=timeout, wait_for_workers=False
        )
        dist_url = f"tcp://127.0.0.1:{launcher_store.port}"
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
            launcher_store is not None,
            os.getpid(),
        ),
        daemon=False,
        start_method="spawn",
    )


def _available_cores() -> int:
    """The cores this process may run on (its affinity mask, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_cpu_processes(processes: int, allow_oversubscribe: bool) -> None:
    """Refuse more CPU processes than cores unless asked: each one is a full Python process
    with torch, the model and its data loader, and a typo such as ``--num-gpus 64`` would
    otherwise exhaust the machine's memory before any rank logs a line."""
    cores = _available_cores()
    if processes <= cores:
        return
    per_rank, source = _private_memory_mib()
    memory = (
        f"expect at least {per_rank} MiB per process ({source}; a rank also holds its model, "
        f"optimizer and data workers), {processes * per_rank / 1024:.1f} GiB in all"
    )
    if not allow_oversubscribe:
        raise ValueError(
            f"--num-gpus {processes} train.device=cpu: {processes} CPU processes on {cores} "
            f"cores; {memory}. Use at most --num-gpus {cores}, or add --allow-oversubscribe"
        )
    logger.warning(
        "%d CPU processes on %d cores (--allow-oversubscribe): %s", processes, cores, memory
    )


def _private_memory_mib() -> tuple[int, str]:
    """What each spawned rank costs at least, and where the figure comes from.

    A rank starts as this launcher is now (interpreter, torch, the config) and then builds its
    model and data loader, so the launcher's private memory (anonymous pages; the shared
    libraries' pages are shared between processes) is a lower bound. Where /proc has no
    smaps_rollup, the peak resident memory stands in (an overestimate: it counts shared pages).
    """
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            header, *lines = f.read().splitlines()  # the header is the address range
        fields = dict(line.split(":", 1) for line in lines)
        return int(fields["Anonymous"].split()[0]) // 1024, "this launcher's private memory"
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
        return peak, "this launcher's peak resident memory"


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
    join_launcher_store: bool,
    launcher_pid: int,
) -> None:
    _exit_with_launcher(launcher_pid)
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
        join_launcher_store=join_launcher_store,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
    )


def _exit_with_launcher(launcher_pid: int) -> None:
    """Make this spawned worker exit as soon as the launcher process that spawned it dies.

    Without this, killing the launcher leaves its workers training and writing checkpoints.
    torch arms SIGINT as the parent-death signal, but a launcher started in the background by a
    script ignores SIGINT and its workers inherit that. SIGKILL cannot be ignored, and
    checkpoints are written atomically, so it leaves none half-written.

    Args:
        launcher_pid: the process id of the launcher, taken before spawning.
    """
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(
            target=_watch_launcher, args=(launcher_pid,), name="launcher-watchdog", daemon=True
        ).start()
    # The launcher may have died before the signal was armed, and then it never comes.
    if os.getppid() != launcher_pid:
        os._exit(1)


def _set_parent_death_signal(sig: int) -> bool:
    """Have Linux send ``sig`` to this process when the thread that spawned it exits.

    That thread is the one that called :func:`launch`, which waits in it for the workers.

    Args:
        sig: the signal to receive.

    Returns:
        False where prctl is unavailable (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG, {sig}) failed: {os.strerror(err)}")
    return True


def _watch_launcher(launcher_pid: int) -> None:
    """Poll for the launcher's death where no parent-death signal exists: once it is gone this
    process is re-parented, so the parent id changes."""
    while os.getppid() == launcher_pid:
        time.sleep(1.0)
    # os._exit, not sys.exit: in a thread, SystemExit would end only this thread.
    os._exit(1)


def _init_and_run(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    device: str,
    timeout: datetime.timedelta,
    *,
    init_method: str,
    join_launcher_store: bool,
    rank: int,
    world_size: int,
    local_rank: int,
) -> None:
    backend = _backend(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:
        share_cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    try:
        if join_launcher_store:
            # The launcher serves the store at init_method: every rank joins it as a client.
            url = urlsplit(init_method)
            rendezvous = {
                "store": dist.TCPStore(
                    url.hostname, url.port, world_size, is_master=False, timeout=timeout
                )
            }
        else:
            rendezvous = {"init_method": init_method}
        dist.init_process_group(
            backend, world_size=world_size, rank=rank, timeout=timeout, **rendezvous
        )
    except Exception as e:
        raise RuntimeError(f"process group init failed at {init_method} (rank {rank}): {e}") from e
    try:
        dist.barrier()
        main_func(*args)
        # Leave together: a rank tearing gloo down while another still works can abort (seen
        # as SIGABRT, "terminate called without an active exception", in a rank that finished
        # early because only rank 0 evaluates). Not after an exception: the others may be gone.
        dist.barrier()
    finally:
        dist.destroy_process_group()
        # Close the launcher's store client now, not during interpreter shutdown.
        rendezvous.clear()
