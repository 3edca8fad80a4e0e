"""Training hooks: timing, learning rate, weight averaging, checkpoints with RNG state, evaluation,
writers."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sqr.utils import comm
from sqr.utils.checks import check_positive
from sqr.utils.events import EventWriter

from .checkpoint import DetectionCheckpointer
from .ema import ModelEMA
from .train_loop import HookBase

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Record each step's wall time as ``time`` and log the total at the end."""

    def __init__(self) -> None:
        self._step_start = 0.0
        self._train_start = 0.0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._step_start)

    def after_train(self) -> None:
        done = self.trainer.iter - self.trainer.start_iter
        total = time.perf_counter() - self._train_start
        logger.info(
            "Trained %d iterations in %.1f s (%.4f s / it)", done, total, total / max(done, 1)
        )


class LRSchedulerHook(HookBase):
    """Log the learning rate and step the scheduler after every iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler

    def after_step(self) -> None:
        # The group with the most parameters stands for "the" lr (others may be scaled).
        group = max(self._optimizer.param_groups, key=lambda g: len(g["params"]))
        self.trainer.storage.put_scalar("lr", group["lr"], smoothing_hint=False)
        self._scheduler.step()


class EMAHook(HookBase):
    """Update a :class:`~sqr.engine.ema.ModelEMA` after every optimizer step.

    Register it before the hooks that read the average (evaluation), so that they see the
    update of the step just run. The average is saved and restored as the checkpointer's
    ``"ema"`` entry.
    """

    def __init__(self, ema: ModelEMA) -> None:
        self._ema = ema

    def after_step(self) -> None:
        self._ema.update(self.trainer.model)


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointHook(HookBase):
    """Save ``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at the end,
    once the state has proven finite.

    The state after iteration ``i`` is written in the ``after_backward`` of the next step (or of
    the trainer's final check), once that step's loss and gradients are known to be finite: a
    blow-up is never saved as ``last_checkpoint``. Until then the hook holds what the state needs
    from iteration ``i`` itself (the RNG states, and a copy of the model's buffers, which a forward
    pass may change; parameters and optimizer state change only in the optimizer step).

    Every rank's RNG state goes into the checkpoint (one entry per rank), so ``--resume``
    continues with the same random stream as an uninterrupted run. All ranks must run this hook:
    the RNG states are gathered collectively; only the checkpointer of the main process writes.

    Args:
        checkpointer: writes the files.
        period: iterations between checkpoints.
        max_iter: total iterations (for ``model_final``).
        max_to_keep: keep only this many periodic checkpoints (None: all), counting those of
            earlier runs in the same directory.
    """

    def __init__(
        self,
        checkpointer: DetectionCheckpointer,
        period: int,
        max_iter: int,
        max_to_keep: int | None = None,
    ) -> None:
        check_positive(period=period, max_iter=max_iter)
        if max_to_keep is not None:
            check_positive(max_to_keep=max_to_keep)
        self._checkpointer = checkpointer
        self._period = period
        self._max_iter = max_iter
        self._max_to_keep = max_to_keep
        self._pending: dict[str, Any] | None = None

    def after_step(self) -> None:
        iteration = self.trainer.iter
        names = []
        if (iteration + 1) % self._period == 0:
            names.append(f"model_{iteration:07d}")
        if iteration >= self._max_iter - 1:
            names.append("model_final")
        if not names:
            return
        model = self._checkpointer.model
        buffers = {name for name, _ in model.named_buffers()}
        self._pending = {
            "names": names,
            "iteration": iteration,
            "rng": comm.all_gather(capture_rng_state()),
            "buffers": {k: v.clone() for k, v in model.state_dict().items() if k in buffers},
        }

    def after_backward(self) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        for name in pending["names"]:
            self._checkpointer.save(
                name,
                model_buffers=pending["buffers"],
                iteration=pending["iteration"],
                rng=pending["rng"],
            )
        if self._max_to_keep is not None:
            self._remove_old_checkpoints()

    def _remove_old_checkpoints(self) -> None:
        # The directory, not this process's memory, says what exists: checkpoints of an earlier
        # run (before a restart) count against max_to_keep too.
        if not self._checkpointer.save_to_disk:
            return
        directory = self._checkpointer.save_dir
        periodic = sorted(
            name for name in os.listdir(directory) if _PERIODIC_CHECKPOINT.fullmatch(name)
        )
        for name in periodic[: -self._max_to_keep]:
            os.remove(os.path.join(directory, name))


_PERIODIC_CHECKPOINT = re.compile(r"model_\d{7}\.pth")


class EvalHook(HookBase):
    """Evaluate every ``period`` iterations and after the last one.

    Args:
        period: iterations between evaluations (0: only at the end).
        eval_function: returns nested results, e.g. ``{"bbox": {"AP": 41.2, ...}}``.
    """

    def __init__(self, period: int, eval_function: Callable[[], Mapping[str, Any]]) -> None:
        self._period = period
        self._eval_function = eval_function

    def _evaluate(self) -> None:
        results = self._eval_function()
        flat = _flatten(results)
        for key, value in flat.items():
            if not isinstance(value, (int, float)):
                raise TypeError(f"evaluation result '{key}' is {value!r}, not a number")
        if flat:
            self.trainer.storage.put_scalars(smoothing_hint=False, **flat)
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if (
            self._period > 0
            and next_iter % self._period == 0
            and next_iter != self.trainer.max_iter
        ):
            self._evaluate()

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:  # training completed, not aborted
            # Report the final evaluation at the last iteration, as detectron2 does.
            self.trainer.storage.iter = self.trainer.max_iter - 1
            self._evaluate()


def _flatten(results: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


class PeriodicWriter(HookBase):
    """Run the event writers every ``period`` iterations and once at the end."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        self._writers = list(writers)
        self._period = period

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self._period == 0 or iteration == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            writer.write()
            writer.close()
