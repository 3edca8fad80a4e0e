"""Environment summary, random seeding and CPU process settings."""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import platform
import random
import sys

import numpy as np
import torch

logger = logging.getLogger(__name__)

# mallopt parameters, <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_TUNABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def seed_all_rng(seed: int | None = None) -> int:
    """Seed Python, NumPy and torch; a random seed is drawn (and returned) when None."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def collect_env_info() -> str:
    """A table of the versions and devices that matter for reproducing a run."""
    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("platform", platform.platform()),
        ("numpy", np.__version__),
        ("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("CUDA available", str(torch.cuda.is_available())),
        ("CPU threads", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        rows.append(("CUDA (torch build)", str(torch.version.cuda)))
        for index in range(torch.cuda.device_count()):
            rows.append((f"GPU {index}", torch.cuda.get_device_name(index)))
    for package in ("sqr", "torchvision", "fvcore", "iopath", "omegaconf", "pycocotools", "scipy"):
        try:
            version = getattr(importlib.import_module(package), "__version__", "unknown")
        except ImportError:
            version = "not installed"
        rows.append((package, str(version)))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it on free,
    so each CPU training step page-faults its large activations back in (SQR's are several
    times larger than the baseline's). This is ``MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=<huge>`` set from inside the process: no ``mmap`` for large blocks,
    no trimming of the heap. Call it before the first large allocation. Nothing changes when
    the user set either variable (their choice wins) or the C library is not glibc.

    Returns:
        Whether the setting was applied.
    """
    if any(name in os.environ for name in _GLIBC_TUNABLES):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt returns 1 on success; a trim threshold of -1 disables trimming.
    applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
    if applied:
        logger.info("glibc keeps freed memory for reuse (mallopt M_MMAP_MAX=0, no trimming)")
    return applied


def share_cpu_threads(processes_per_machine: int) -> int | None:
    """Give this process its share of the machine's cores for intra-op parallelism.

    Every process defaults to one thread per core, so N processes on one machine oversubscribe
    it N times (measured: 17.1 s/it for 2 processes on 2 cores, against 0.374 s/it with one
    thread each). ``OMP_NUM_THREADS``, when set, wins (torchrun sets it to 1).

    Args:
        processes_per_machine: the processes sharing this machine's cores.

    Returns:
        The thread count set, or None when ``OMP_NUM_THREADS`` decided.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // max(1, processes_per_machine))
    torch.set_num_threads(threads)
    return threads
