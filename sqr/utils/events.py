"""Training metrics: an event storage the trainer fills, and the writers that read it.

The storage keeps a history of every scalar; writers print a console line, append rows to
``metrics.json`` (one JSON object per line, detectron2's format) and, when ``tensorboard`` is
installed, write TensorBoard events.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import resource
import time
from collections import defaultdict

import torch
from fvcore.common.history_buffer import HistoryBuffer

from sqr.utils.file_io import to_strict_json

logger = logging.getLogger(__name__)

_CURRENT_STORAGE_STACK: list[EventStorage] = []
# The decoder stage of a per-stage loss term: loss_class_s3.
_STAGE_SUFFIX = re.compile(r"_s\d+$")


def get_event_storage() -> EventStorage:
    """The storage of the running trainer; an error outside ``with EventStorage(...)``."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError("get_event_storage() must be called inside 'with EventStorage(...)'")
    return _CURRENT_STORAGE_STACK[-1]


class EventStorage:
    """Scalars by name, each with its recent history and the iteration of its latest value.

    The writers have everything on disk (``metrics.json``, TensorBoard) and read only recent
    windows (20 values to smooth, 1000 step times for the ETA), so each history keeps the last
    ``max_history`` values: a 375k-iteration run would otherwise hold every scalar of every
    iteration (about 1 GB per rank).

    Args:
        start_iter: iteration number the storage starts at.
        max_history: values kept per scalar.
    """

    def __init__(self, start_iter: int = 0, max_history: int = 10000) -> None:
        if max_history < 1:
            raise ValueError(f"max_history must be positive, got {max_history}")
        self.iter = start_iter
        self._history: dict[str, HistoryBuffer] = defaultdict(
            lambda: HistoryBuffer(max_length=max_history)
        )
        self._latest: dict[str, tuple[float, int]] = {}
        self._smoothing_hints: dict[str, bool] = {}

    def put_scalar(self, name: str, value: float, smoothing_hint: bool = True) -> None:
        """Record ``value`` for the current iteration.

        Args:
            smoothing_hint: whether writers should show a windowed median rather than the
                latest value (True for noisy training scalars, False for evaluation results).
        """
        value = float(value)
        self._history[name].update(value, self.iter)
        self._latest[name] = (value, self.iter)
        self._smoothing_hints.setdefault(name, smoothing_hint)

    def put_scalars(self, *, smoothing_hint: bool = True, **scalars: float) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"no scalar named '{name}' in the event storage")
        return self._history[name]

    def has(self, name: str) -> bool:
        return name in self._history

    def names(self) -> list[str]:
        return sorted(self._history)

    def latest(self, name: str) -> tuple[float, int]:
        """Latest value of ``name`` and the iteration it was recorded at."""
        return self._latest[name]

    def latest_with_smoothing(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Latest value of every scalar (windowed median where hinted) with its iteration."""
        return {
            name: (
                self._history[name].median(window_size) if self._smoothing_hints[name] else value,
                iteration,
            )
            for name, (value, iteration) in self._latest.items()
        }

    def step(self) -> None:
        self.iter += 1

    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    """Reads the current storage and writes it somewhere."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _new_scalars(written: dict[str, int], window_size: int) -> list[tuple[str, float, int]]:
    """Scalars recorded since a writer last wrote them; updates ``written`` in place."""
    storage = get_event_storage()
    fresh = []
    for name, (value, iteration) in storage.latest_with_smoothing(window_size).items():
        if iteration > written.get(name, -1):
            fresh.append((name, value, iteration))
            written[name] = iteration
    return fresh


class JSONWriter(EventWriter):
    """Append one JSON object per iteration with new scalars to ``json_file``.

    Training rows and evaluation rows carry different keys (an evaluation row has ``bbox/AP``
    and no losses); both have ``iteration``. The file is strict JSON: a non-finite value (an AP
    with no ground truth of that size) is written as ``null``.
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        self._file = open(json_file, "a", encoding="utf-8")
        self._window_size = window_size
        self._written: dict[str, int] = {}  # scalar name -> iteration last written

    def write(self) -> None:
        rows: dict[int, dict[str, float]] = defaultdict(dict)
        for name, value, iteration in _new_scalars(self._written, self._window_size):
            rows[iteration][name] = value
        for iteration in sorted(rows):
            row = to_strict_json({"iteration": iteration, **rows[iteration]})
            self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorboardWriter(EventWriter):
    """Write new scalars as TensorBoard events (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str, window_size: int = 20) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._window_size = window_size
        self._written: dict[str, int] = {}

    def write(self) -> None:
        for name, value, iteration in _new_scalars(self._written, self._window_size):
            self._writer.add_scalar(name, value, iteration)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def max_memory_mb() -> float:
    """Peak memory of this process: CUDA max allocated when on GPU, else peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class CommonMetricPrinter(EventWriter):
    """Console line: ETA, iteration, total loss, each loss term summed over the stages, step and
    data time, learning rate, max memory."""

    def __init__(self, max_iter: int, window_size: int = 20) -> None:
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: tuple[int, float] | None = None
        self._last_printed = -1

    def _eta(self, storage: EventStorage) -> str:
        iteration = storage.iter
        if storage.has("time"):
            seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
        elif self._last_write is not None:
            last_iter, last_time = self._last_write
            per_iter = (time.perf_counter() - last_time) / max(iteration - last_iter, 1)
            seconds = per_iter * (self._max_iter - iteration - 1)
        else:
            return "N/A"
        self._last_write = (iteration, time.perf_counter())
        return str(datetime.timedelta(seconds=int(seconds)))

    def _compact_losses(self, storage: EventStorage) -> dict[str, float]:
        """``total_loss`` first, then each loss term summed over the decoder stages
        (``loss_giou`` for ``loss_giou_s0`` ... ``loss_giou_s5``); the per-stage values stay in
        ``metrics.json`` and TensorBoard. Each value is the median over the window."""
        medians = {
            name: storage.history(name).median(self._window_size)
            for name in storage.names()
            if "loss" in name
        }
        compact = {"total_loss": medians.pop("total_loss")}
        for name, value in medians.items():
            base = _STAGE_SUFFIX.sub("", name)
            compact[base] = compact.get(base, 0.0) + value
        return compact

    def write(self) -> None:
        storage = get_event_storage()
        if not storage.has("total_loss"):
            return
        iteration = storage.latest("total_loss")[1]
        if iteration == self._last_printed:
            return  # nothing trained since the last line (e.g. the final write after training)
        self._last_printed = iteration
        losses = "  ".join(
            f"{name}: {value:.4g}" for name, value in self._compact_losses(storage).items()
        )

        def timing(name: str) -> str:
            if not storage.has(name):
                return ""
            return f"{name}: {storage.history(name).avg(self._window_size):.4f}  "

        lr = f"lr: {storage.history('lr').latest():.5g}  " if storage.has("lr") else ""
        logger.info(
            f" eta: {self._eta(storage)}  iter: {iteration}  {losses}  "
            f"{timing('time')}{timing('data_time')}{lr}max_mem: {max_memory_mb():.0f}M"
        )
