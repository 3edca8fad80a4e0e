"""CPU process settings: glibc keeps freed memory, and processes share the cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sqr.utils.env import share_cpu_threads

# Counts the page faults of five 128 MB allocations after a first one: glibc serves blocks
# that large with a fresh mmap and unmaps them on free, so each one faults all its pages in
# again, unless it keeps freed memory.
_FAULTS = """
import ctypes, resource, sys
from sqr.utils.env import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch_and_free():
    block = libc.malloc(128 << 20)
    ctypes.memset(block, 1, 128 << 20)
    libc.free(block)
touch_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch_and_free()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_large_blocks() -> None:
    applied, default_faults = _faults("default")
    assert applied == "False" and default_faults > 5 * 10000  # 128 MB: 32768 pages of 4 KB
    applied, kept_faults = _faults("keep")
    assert applied == "True" and kept_faults < default_faults / 10
    # A user's own glibc variables win: nothing is changed then.
    applied, _ = _faults("keep", MALLOC_MMAP_MAX_="65536")
    assert applied == "False"


def test_processes_share_the_cores(monkeypatch) -> None:
    previous = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        assert share_cpu_threads(2) == max(1, cores // 2) == torch.get_num_threads()
        assert share_cpu_threads(64) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert share_cpu_threads(2) is None  # the user's setting wins
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
