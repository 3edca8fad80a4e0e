"""Learning-rate schedules: an fvcore ``ParamScheduler`` over training progress, plus warmup.

The schedule itself is written in any unit that matches its ``num_updates`` (epochs or
iterations): fvcore schedulers are evaluated at the fraction of training done, so
``MultiStepParamScheduler(values=[1, 0.1], milestones=[40], num_updates=50)`` means "drop at
epoch 40 of 50" whatever the number of iterations per epoch turns out to be. Warmup is counted
in iterations, as the reference recipes state it.
"""

from __future__ import annotations

import logging

import torch
from fvcore.common.param_scheduler import ParamScheduler

logger = logging.getLogger(__name__)

_WARMUP_METHODS = ("linear", "constant", "rtdetr")


class LRSchedule:
    """A learning-rate multiplier as a function of the iteration.

    During the warmup (iterations ``i < warmup_iters``) the scheduler's value is multiplied by

    * ``"linear"``: ``warmup_factor * (1 - i / warmup_iters) + i / warmup_iters`` (detectron2's
      ramp from ``warmup_factor``);
    * ``"constant"``: ``warmup_factor``;
    * ``"rtdetr"``: ``(i + 1) / warmup_iters`` (RT-DETR's ``LinearWarmup``: its first step
      already runs at ``1 / warmup_iters``, and iteration ``warmup_iters - 1`` at the full lr;
      ``warmup_factor`` is not used).

    Args:
        scheduler: multiplier as a function of the fraction of training done, in [0, 1).
        warmup_iters: length of the warmup in iterations (0 for none).
        warmup_factor: multiplier at iteration 0 of the "linear" and "constant" warmups.
        warmup_method: "linear", "constant" or "rtdetr".
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
    ) -> None:
        if warmup_method not in _WARMUP_METHODS:
            raise ValueError(
                f"warmup_method must be one of {', '.join(map(repr, _WARMUP_METHODS))}, got "
                f"{warmup_method!r}"
            )
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.scheduler = scheduler
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method

    def __call__(self, iteration: int, max_iter: int) -> float:
        value = self.scheduler(min(iteration / max_iter, 1.0 - 1e-9))
        if iteration < self.warmup_iters:
            if self.warmup_method == "constant":
                factor = self.warmup_factor
            elif self.warmup_method == "rtdetr":
                factor = (iteration + 1) / self.warmup_iters
            else:
                alpha = iteration / self.warmup_iters
                factor = self.warmup_factor * (1 - alpha) + alpha
            value *= factor
        return value


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Sets every param group's lr to its base lr times ``schedule(iteration, max_iter)``.

    Step it once per iteration. Only ``base_lrs``, ``last_epoch`` (the iteration) and
    ``max_iter`` are saved, so a checkpoint never holds the schedule object itself.

    **On resume the configuration wins.** :meth:`load_state_dict` restores only the iteration:
    the base learning rates and ``max_iter`` stay those this scheduler was built with (a user who
    changes ``optimizer.lr`` or ``train.max_iter`` on ``--resume`` means it), a difference from
    the checkpoint is logged as a warning, and every param group's lr is set again for the
    resumed iteration. Load the optimizer's state first: it brings back the old lrs.

    Args:
        optimizer: the optimizer to drive.
        schedule: an :class:`LRSchedule`, or a bare fvcore ``ParamScheduler`` (no warmup).
        max_iter: total training iterations.
        last_iter: iteration of the last step taken (-1 for a fresh start).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule | ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        if not isinstance(schedule, LRSchedule):
            schedule = LRSchedule(schedule)
        self._schedule = schedule
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict:
        return {
            "base_lrs": self.base_lrs,
            "last_epoch": self.last_epoch,
            "max_iter": self._max_iter,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue at the saved iteration with this scheduler's base lrs and ``max_iter``.

        Args:
            state_dict: from :meth:`state_dict` (``max_iter`` is absent in older checkpoints).
        """
        self.last_epoch = state_dict["last_epoch"]
        saved_lrs, saved_max_iter = list(state_dict["base_lrs"]), state_dict.get("max_iter")
        if saved_lrs != self.base_lrs:
            logger.warning(
                "Resuming with other learning rates: base learning rates %s in the checkpoint, "
                "%s in the config; the config's apply from iteration %d",
                saved_lrs,
                self.base_lrs,
                self.last_epoch,
            )
        if saved_max_iter is not None and saved_max_iter != self._max_iter:
            logger.warning(
                "Resuming with another schedule length: max_iter %d in the checkpoint, %d in the "
                "config; from iteration %d the lr follows the schedule over %d iterations",
                saved_max_iter,
                self._max_iter,
                self.last_epoch,
                self._max_iter,
            )
        # The optimizer's loaded state holds the lrs the old configuration gave this iteration.
        for group, base_lr, lr in zip(
            self.optimizer.param_groups, self.base_lrs, self.get_lr(), strict=True
        ):
            group["initial_lr"], group["lr"] = base_lr, lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        multiplier = self._schedule(self.last_epoch, self._max_iter)
        return [base_lr * multiplier for base_lr in self.base_lrs]
