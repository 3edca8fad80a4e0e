"""Environment summary and random seeding."""

from __future__ import annotations

import importlib
import os
import platform
import random
import sys

import numpy as np
import torch


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
