"""Timed training steps, a one-rank DDP step, torch.compile and loader throughput, for
``sqr-gpu-check`` (:mod:`sqr.tools.gpu_check`).

Timing protocol (every function here): warm-up steps first, untimed (the first call of every
kernel compiles or autotunes it, cuDNN picks algorithms, the allocator grows); then the timed
steps with ``torch.cuda.set_sync_debug_mode`` off, each bracketed by CUDA events (off CUDA: the
wall clock), so the times are the device's and the report's synchronisation counts, taken in a
separate pass (:func:`count_syncs`), cannot slow them. Everything also runs on CPU (the dry run).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sqr.tools import _device_checks as checks
from sqr.tools._workload import HostMatchingTimer, synthetic_batch

#: precision -> (TF32 on, autocast dtype or None, grad scaler)
PRECISIONS = {
    "fp32": (False, None, False),
    "tf32": (True, None, False),
    "bf16": (False, torch.bfloat16, False),
    "fp16": (False, torch.float16, True),  # with GradScaler, as train.amp.dtype="float16"
}


@dataclass
class StepTimes:
    """Medians over the timed steps (ms), the peak memory (MB, CUDA only) and the last loss."""

    forward_ms: float
    backward_ms: float  # backward, gradient unscaling and the optimizer step
    host_match_ms: float  # the matchers' scipy solves, inside forward_ms
    peak_mb: float | None
    loss: float

    @property
    def step_ms(self) -> float:
        return self.forward_ms + self.backward_ms


class _Clock:
    """Marks on the device's stream (CUDA events) or the host's clock; ``ms(a, b)`` after
    :meth:`wait`."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wait(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start: object, end: object) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


class Stepper:
    """One training step of ``model`` in a precision: forward under autocast, backward (scaled
    with fp16), optimizer step; ``marks`` (if given) is called between forward and backward."""

    def __init__(self, model: nn.Module, precision: str, device: str) -> None:
        self.model = model
        self.device = device
        self.tf32, self.dtype, scaled = PRECISIONS[precision]
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device) if scaled else None

    def __call__(self, batch: list[dict], between: Callable[[], None] | None = None) -> float:
        """One step; returns the loss tensor (still on the device)."""
        with checks.tf32(self.tf32):
            with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype is not None):
                total = sum(self.model(batch).values())
            if between is not None:
                between()
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                total.backward()
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return total.detach()


def time_steps(step: Stepper, batch: list[dict], iters: int, warmup: int) -> StepTimes:
    """``warmup`` untimed steps, then ``iters`` timed ones (see the module docstring)."""
    cuda = step.device == "cuda"
    clock = _Clock(cuda)
    for _ in range(warmup):
        step(batch)
    clock.wait()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    forward, backward, matching = [], [], []
    with HostMatchingTimer() as timer:
        timer.take()
        for _ in range(iters):
            marks = [clock.mark()]
            loss = step(batch, functools.partial(lambda m: m.append(clock.mark()), marks))
            marks.append(clock.mark())
            clock.wait()
            forward.append(clock.ms(marks[0], marks[1]))
            backward.append(clock.ms(marks[1], marks[2]))
            matching.append(timer.take()[0] * 1e3)
    peak = torch.cuda.max_memory_allocated() / checks.MB if cuda else None
    median = statistics.median
    return StepTimes(median(forward), median(backward), median(matching), peak, loss.item())


def count_syncs(step: Stepper, batch: list[dict]) -> Counter:
    """The synchronisations of one step, per call site (CUDA only; empty elsewhere): the
    separate, untimed pass with ``set_sync_debug_mode("warn")``."""
    with checks.counting_syncs(step.device == "cuda") as caught:
        step(batch)
    return checks.sync_sites(caught)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_rank_group(device: str) -> Iterator[str]:
    """A process group of this process alone (NCCL on CUDA, gloo elsewhere); yields its
    backend's name and destroys the group after."""
    backend = "nccl" if device == "cuda" else "gloo"
    torch.distributed.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        yield backend
    finally:
        torch.distributed.destroy_process_group()


def ddp_step_times(
    model: nn.Module, batch: list[dict], device: str, iters: int, warmup: int
) -> tuple[str, StepTimes]:
    """:func:`time_steps` in TF32 of ``model`` wrapped in ``DistributedDataParallel`` on a
    one-rank group: what the gradient buckets' all-reduce and DDP's hooks add to a step."""
    with one_rank_group(device) as backend:
        ids = [torch.cuda.current_device()] if device == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        times = time_steps(Stepper(ddp, "tf32", device), batch, iters, warmup)
        del ddp
    return backend, times


def compiled_step_times(
    model: nn.Module, batch: list[dict], device: str, backend: str, iters: int
) -> tuple[float, StepTimes]:
    """``model`` compiled in place with ``backend`` (as ``train.compile`` does): the seconds of
    its first step (tracing and compiling) and :func:`time_steps` in TF32 after it."""
    model.compile(backend=backend)
    step = Stepper(model, "tf32", device)
    clock = _Clock(device == "cuda")
    clock.wait()
    start = time.perf_counter()
    step(batch)
    clock.wait()
    first = time.perf_counter() - start
    return first, time_steps(step, batch, iters, warmup=1)


def loader_throughput(
    num_images: int, height: int, width: int, batch_size: int, workers: int, batches: int
) -> float:
    """Images per second of the training loader with the recipes' DETR mapper and augmentation
    (``configs/common/data/coco_detr.py``) on ``num_images`` synthetic JPEGs of ``height`` x
    ``width`` with COCO-like boxes, after one untimed batch (worker start-up)."""
    from PIL import Image

    from sqr.data import DetrDatasetMapper, build_detection_train_loader, detr_train_augmentation

    with tempfile.TemporaryDirectory() as root:
        records = []
        for i, sample in enumerate(synthetic_batch(num_images, height, width, 80, seed=1)):
            path = os.path.join(root, f"{i:06d}.jpg")
            Image.fromarray(sample["image"].permute(1, 2, 0).numpy()).save(path, quality=90)
            boxes, labels = sample["targets"]["boxes"].tolist(), sample["targets"]["labels"]
            annotations = [
                {"bbox": box, "category_id": int(label), "iscrowd": 0}
                for box, label in zip(boxes, labels.tolist(), strict=True)
            ]
            records.append(
                {"file_name": path, "image_id": i, "height": height, "width": width}
                | {"annotations": annotations}
            )
        mapper = DetrDatasetMapper(detr_train_augmentation(), is_train=True)
        loader = build_detection_train_loader(
            records, mapper, batch_size, num_workers=workers, pin_memory=False
        )
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - start
        del it
    return batches * batch_size / seconds
