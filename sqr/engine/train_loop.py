"""The training loop: one trainer, extended through hooks.

The hook life cycle, as pseudo-code::

    hook.before_train()
    for iteration in range(start_iter, max_iter):
        hook.before_step()
        trainer.run_step()      # forward, loss checks, backward, clip, optimizer step
        hook.after_step()
    hook.after_train()          # also runs when training raised (hooks then only clean up)

Hooks see the trainer as ``self.trainer``; ``trainer.iter`` is the iteration being run, and equals
``trainer.max_iter`` in ``after_train`` only when every iteration completed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import torch

from sqr.utils import comm
from sqr.utils.events import EventStorage

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class HookBase:
    """Base class of training hooks; override any of the four methods."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class Trainer:
    """Minimise the sum of the model's loss dict over an infinite data loader.

    Args:
        model: returns a dict of weighted scalar losses in training mode.
        data_loader: iterable of batches (``list[dict]`` in the model-input format).
        optimizer: the optimizer.
        amp_dtype: None for fp32, or "bfloat16"/"float16" for autocast (fp16 adds a grad scaler
            and needs CUDA).
        clip_grad_max_norm: clip the global gradient norm to this value (None: no clipping).
        clip_grad_norm_type: the norm used for clipping.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable[list[dict]],
        optimizer: torch.optim.Optimizer,
        *,
        amp_dtype: str | None = None,
        clip_grad_max_norm: float | None = None,
        clip_grad_norm_type: float = 2.0,
    ) -> None:
        device = next(model.parameters()).device
        if amp_dtype is not None and amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp dtype must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}")
        if amp_dtype == "float16" and device.type != "cuda":
            raise ValueError("float16 AMP needs a CUDA device; use amp dtype 'bfloat16' on CPU")
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.device_type = device.type
        self.amp_dtype = _AMP_DTYPES.get(amp_dtype) if amp_dtype else None
        self.grad_scaler = torch.amp.GradScaler("cuda") if amp_dtype == "float16" else None
        self.clip_grad_max_norm = clip_grad_max_norm
        self.clip_grad_norm_type = clip_grad_norm_type
        self.hooks: list[HookBase] = []
        self.iter = self.start_iter = self.max_iter = 0
        self.storage: EventStorage | None = None
        self._data_iter = None

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        """Append hooks; None entries are skipped (callers may write ``hook if cond else None``)."""
        for hook in hooks:
            if hook is not None:
                hook.trainer = self
                self.hooks.append(hook)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1``."""
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                for hook in self.hooks:
                    hook.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.storage.iter = self.iter
                    for hook in self.hooks:
                        hook.before_step()
                    self.run_step()
                    for hook in self.hooks:
                        hook.after_step()
                self.iter = self.storage.iter = max_iter
            except Exception:
                logger.exception("Exception during training at iteration %d:", self.iter)
                raise
            finally:
                for hook in self.hooks:
                    hook.after_train()

    def run_step(self) -> None:
        """One optimisation step on the next batch."""
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        start = time.perf_counter()
        batch = next(self._data_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(
            self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            loss_dict = self.model(batch)
        losses = sum(loss_dict.values())
        self._check_finite(losses, loss_dict)

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        if self.clip_grad_max_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.clip_grad_max_norm, self.clip_grad_norm_type
            )
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

        metrics = {name: loss.detach().item() for name, loss in loss_dict.items()}
        metrics["data_time"] = data_time
        metrics = comm.reduce_dict_mean(metrics)
        self.storage.put_scalar(
            "total_loss", sum(v for k, v in metrics.items() if k != "data_time")
        )
        self.storage.put_scalars(**metrics)

    def _check_finite(self, losses: torch.Tensor, loss_dict: dict[str, torch.Tensor]) -> None:
        if torch.isfinite(losses).all():
            return
        terms = ", ".join(f"{k}={v.detach().item():.4g}" for k, v in loss_dict.items())
        raise FloatingPointError(
            f"Loss became non-finite at iteration {self.iter}: {terms}. Training stopped; the "
            "last saved checkpoint is untouched."
        )

    def state_dict(self) -> dict:
        return {"grad_scaler": self.grad_scaler.state_dict()} if self.grad_scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
