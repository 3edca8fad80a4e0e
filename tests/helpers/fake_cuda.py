"""A detector's training forward on a fake CUDA device, with every host-device transfer counted.

Under torch's ``FakeTensorMode`` tensors have a device, a shape and a dtype but no data, so a
CUDA model runs on a machine without a GPU. :class:`TransferAudit` sees every op and records
what would make the host wait on a real GPU, by the line of sqr's code that asked for it:

* ``h2d``: a host-to-device copy from pageable memory, or a blocking one (CUDA synchronises the
  host for it): ``torch.tensor(values, device=cuda)``, ``cpu_tensor.to(cuda)``, indexing a
  CUDA tensor with a Python list.
* ``h2d_async``: a non-blocking copy from pinned memory (queued like a kernel; the host goes on).
* ``d2h``: a device-to-host copy (the host waits for every queued kernel).
* ``item`` and ``nonzero``: reads of device values (``.item()``, ``bool(t)``, ``.nonzero()``).

Data does not exist here, so the one step that needs it, the matcher's host solve
(:func:`sqr.modeling.matcher.assign_on_host`), is replaced by an assignment of the right shape.
"""

from __future__ import annotations

import collections
import traceback
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import sqr
from helpers.detectors import build_detector

_PACKAGE = str(Path(sqr.__file__).parent)
_ATEN = torch.ops.aten
KINDS = ("h2d", "h2d_async", "d2h", "item", "nonzero")


def _site() -> str:
    """``file:line`` of the innermost frame in sqr's code that is not the copy helper itself
    (the test's own frame otherwise)."""
    frames = traceback.extract_stack()
    for frame in reversed(frames):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("constants.py"):
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return f"{Path(frames[-4].filename).name}:{frames[-4].lineno}"


class TransferAudit(TorchDispatchMode):
    """Counts transfers and device reads (see the module docstring), by ``(kind, site)``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        # id -> weak reference of each tensor allocated in pinned memory.
        self._pinned: dict[int, weakref.ref] = {}

    def total(self, kind: str) -> int:
        return sum(n for (k, _), n in self.counts.items() if k == kind)

    def sites(self, kind: str) -> dict[str, int]:
        return {site: n for (k, site), n in self.counts.items() if k == kind}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _ATEN.nonzero.default:
            self.counts["nonzero", _site()] += 1
            # Every element counts as non-zero: a valid answer of the right dtype and rank.
            x = args[0]
            return torch.empty((x.numel(), x.dim()), dtype=torch.int64, device=x.device)
        if func is _ATEN._local_scalar_dense.default:
            self.counts["item", _site()] += 1
            return 1
        if func in (_ATEN._to_copy.default, _ATEN.copy_.default):
            if func is _ATEN.copy_.default:
                dst, src = args[0].device, args[1].device
                non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
                source = args[1]
            else:
                src, dst = args[0].device, kwargs.get("device", args[0].device)
                non_blocking = kwargs.get("non_blocking", False)
                source = args[0]
            if src.type == "cpu" and dst.type == "cuda":
                ref = self._pinned.get(id(source))
                pinned = non_blocking and ref is not None and ref() is source
                self.counts["h2d_async" if pinned else "h2d", _site()] += 1
            elif src.type == "cuda" and dst.type == "cpu":
                self.counts["d2h", _site()] += 1
        out = func(*args, **kwargs)
        if kwargs.get("pin_memory") and isinstance(out, torch.Tensor):
            self._pinned[id(out)] = weakref.ref(out)
        return out


def _pinned(values: torch.Tensor) -> torch.Tensor:
    """``values`` in pinned host memory, as the train loader (``pin_memory=True``) hands it."""
    return torch.empty(values.shape, dtype=values.dtype, pin_memory=True).copy_(values)


def fake_batch(sizes: Sequence[tuple[int, int]], num_boxes: Sequence[int]) -> list[dict]:
    """Training inputs in pinned host memory (call under the fake mode): one image per size
    with ``num_boxes[i]`` boxes."""
    inputs = []
    for (height, width), n in zip(sizes, num_boxes, strict=True):
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0]] * n).reshape(-1, 4)
        image = _pinned(torch.zeros(3, height, width, dtype=torch.uint8))
        target = {"boxes": _pinned(boxes), "labels": _pinned(torch.ones(n, dtype=torch.int64))}
        inputs.append({"image": image, "height": height, "width": width, "targets": target})
    return inputs


def fake_assignment(cost: torch.Tensor, counts: Sequence[int]) -> np.ndarray:
    """Stands in for :func:`sqr.modeling.matcher.assign_on_host`: query i to target i."""
    num_groups, _, num_queries, _ = cost.shape
    pairs = [
        [g, b, i, i]
        for g in range(num_groups)
        for b, n in enumerate(counts)
        for i in range(min(n, num_queries))
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 4).T.copy()


def audit_training_forward(
    config: Path, overrides: Sequence[str], num_boxes: Sequence[int] = (2, 1)
) -> TransferAudit:
    """Build the detector on a fake CUDA device and audit one training forward (the losses)."""
    with FakeTensorMode(allow_non_fake_inputs=False):
        with torch.device("cuda"):  # Module.to cannot move parameters onto a fake device
            model = build_detector(config, overrides).train()
        audit = TransferAudit()
        with audit:
            inputs = fake_batch([(64, 80), (72, 56)][: len(num_boxes)], num_boxes)
            audit.counts.clear()  # the audit only had to see which buffers are pinned
            losses = model(inputs)
        assert all(v.device.type == "cuda" for v in losses.values())
    return audit
