"""The training loop: one trainer, extended through hooks.

The hook life cycle, as pseudo-code::

    hook.before_train()
    for iteration in range(start_iter, max_iter):
        hook.before_step()
        trainer.run_step()      # forward, backward, finite check, then:
            hook.after_backward()   # the state before this step is now verified
                                    # ... clip, optimizer step
        hook.after_step()
    trainer.verify_state()      # forward, backward, finite check, after_backward; no update
                                # (parameters untouched, buffers restored)
    hook.after_train()          # also runs when training raised (hooks then only clean up)

Hooks see the trainer as ``self.trainer``; ``trainer.iter`` is the iteration being run, and equals
``trainer.max_iter`` in ``after_train`` only when every iteration completed.

**Non-finite values stop training on every rank.** After the backward pass (and after unscaling,
with a grad scaler) each rank raises one flag if its loss or its gradients are not finite; the
flags are summed over ranks in one collective, so every rank stops together with a
:class:`FloatingPointError` that names the iteration, the ranks and the loss terms, before the
optimizer step. A state that a step produced is only known to be good once the *next* step's
loss and gradients are finite (a step with a huge learning rate writes finite but useless
weights), so ``after_backward`` is where a hook may save the state that the previous step
produced: :class:`~sqr.engine.hooks.CheckpointHook` writes there, and the state after the last
step is verified by one more forward and backward pass. With fp16 AMP, non-finite gradients are
the grad scaler's business (it skips the step and lowers the scale); only the loss is checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from sqr.utils import comm
from sqr.utils.checks import check_positive
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

    def after_backward(self) -> None:
        """Called once the loss and gradients of the current step are known to be finite,
        before the optimizer step: the parameters still hold the previous step's result."""


class Trainer:
    """Minimise the sum of the model's loss dict over an infinite data loader.

    Args:
        model: returns a dict of weighted scalar losses in training mode.
        data_loader: iterable of batches (``list[dict]`` in the model-input format).
        optimizer: the optimizer.
        amp_dtype: None for fp32, or "bfloat16"/"float16" for autocast (fp16 adds a grad
            scaler).
        clip_grad_max_norm: clip the global gradient norm to this value (None: no clipping).
        clip_grad_norm_type: the norm used for clipping.
        log_period: iterations between the reads of the losses into the event storage (the
            writers' period): in between they stay on the device, so that logging costs one
            synchronisation per period, not one per loss term and step.
        compile_options: keyword arguments of ``torch.compile`` for the model's forward
            (compiled in place, so parameter names and checkpoints stay those of the eager
            model; the matcher's host solve breaks the graph), or None for eager
            (:func:`sqr.engine.compile.compile_options` reads ``train.compile``).
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
        log_period: int = 20,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        device = next(model.parameters()).device
        if amp_dtype is not None and amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp dtype must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}")
        check_positive(log_period=log_period)
        if clip_grad_max_norm is not None and not clip_grad_max_norm > 0:
            raise ValueError(f"clip_grad_max_norm must be positive, got {clip_grad_max_norm!r}")
        if compile_options is not None:
            model.compile(**compile_options)
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.device_type = device.type
        self.amp_dtype = _AMP_DTYPES.get(amp_dtype) if amp_dtype else None
        self.grad_scaler = torch.amp.GradScaler(device.type) if amp_dtype == "float16" else None
        self.clip_grad_max_norm = clip_grad_max_norm
        self.clip_grad_norm_type = clip_grad_norm_type
        self.log_period = log_period
        self._pending_metrics: list[tuple[int, list[str], torch.Tensor, float]] = []
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
        """Run iterations ``start_iter .. max_iter - 1``, then verify the final state."""
        for name, value in (("start_iter", start_iter), ("max_iter", max_iter)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if not 0 <= start_iter < max_iter:
            raise ValueError(
                f"nothing to train: start_iter={start_iter}, max_iter={max_iter} (need "
                "0 <= start_iter < max_iter; a resumed run that already finished has nothing "
                "left to do)"
            )
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
                self.verify_state()
                self.iter = self.storage.iter = max_iter
            except Exception as e:
                # One line on the console and the traceback in log.txt only (DEBUG): the
                # exception goes on to the caller, and the interpreter (or the launcher, for a
                # spawned rank) prints its traceback once.
                logger.error(
                    "Exception during training at iteration %d: %s: %s",
                    self.iter,
                    type(e).__name__,
                    e,
                )
                logger.debug(
                    "Traceback of the exception at iteration %d:", self.iter, exc_info=True
                )
                raise
            finally:
                for hook in self.hooks:
                    hook.after_train()

    def run_step(self) -> None:
        """One optimisation step on the next batch."""
        start = time.perf_counter()
        batch = self._next_batch()
        data_time = time.perf_counter() - start

        loss_dict, grad_norm = self._forward_backward(batch, f"iteration {self.iter}")
        for hook in self.hooks:
            hook.after_backward()
        if self.clip_grad_max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(
                self._params_with_grad(), self.clip_grad_max_norm, grad_norm
            )
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

        # Kept on the device until the log period ends: reading a loss is a synchronisation.
        values = torch.stack([loss.detach().float() for loss in loss_dict.values()])
        self._pending_metrics.append((self.iter, list(loss_dict), values, data_time))
        if (self.iter + 1) % self.log_period == 0 or self.iter == self.max_iter - 1:
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        """Average the pending steps' losses and data times over ranks (one collective) and
        read them (one host copy) into the event storage, each at its own iteration."""
        pending, self._pending_metrics = self._pending_metrics, []
        names = pending[0][1]
        if any(step_names != names for _, step_names, _, _ in pending):
            raise ValueError(f"the model's loss terms changed between iterations: {names}")
        losses = torch.stack([values for _, _, values, _ in pending])  # [steps, terms]
        data_times = losses.new_tensor([data_time for *_, data_time in pending])
        table = torch.cat([losses, data_times[:, None]], dim=1)
        table = (comm.all_reduce_sum(table) / comm.get_world_size()).tolist()
        current = self.storage.iter
        for (iteration, *_), row in zip(pending, table, strict=True):
            self.storage.iter = iteration
            self.storage.put_scalar("total_loss", sum(row[:-1]))
            self.storage.put_scalars(**dict(zip(names, row[:-1], strict=True)), data_time=row[-1])
        self.storage.iter = current

    def verify_state(self) -> None:
        """Check that the current parameters give a finite loss and finite gradients on the next
        batch, without changing the model; then call the hooks' ``after_backward``.

        The pass runs in training mode, like every step's check; the buffers it updates
        (BatchNorm running statistics) are restored afterwards, so the model in memory, which
        the final evaluation sees, equals the saved ``model_final.pth``.

        :meth:`train` calls it after the last step, so that the final state passes the same
        check as every state before it.
        """
        logger.info(
            "Verifying the final state: one forward and backward pass, no update (buffers such "
            "as BatchNorm statistics are restored)"
        )
        # The check runs in training mode, as every step's check does, so its forward pass
        # updates buffers (BatchNorm running statistics): put them back, so that the model
        # evaluated and kept in memory is the one model_final.pth holds.
        saved = [(buffer, buffer.detach().clone()) for buffer in self.model.buffers()]
        try:
            self._forward_backward(
                self._next_batch(), f"the check of the state after the last iteration {self.iter}"
            )
        finally:
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
        for hook in self.hooks:
            hook.after_backward()
        self.optimizer.zero_grad(set_to_none=True)

    def _next_batch(self) -> list[dict]:
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        return next(self._data_iter)

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.grad is not None]

    def _forward_backward(
        self, batch: list[dict], context: str
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Losses and gradients (unscaled) of one batch, checked for non-finite values.

        Args:
            batch: the model inputs.
            context: where in training this is, for the error message.

        Returns:
            The loss dict and the total gradient norm (of ``clip_grad_norm_type``).
        """
        with torch.autocast(
            self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            loss_dict = self.model(batch)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        # Backward runs even when the loss is not finite: under DDP the other ranks are waiting
        # for this rank's gradients in the all-reduce.
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        grads = [p.grad for p in self._params_with_grad()]
        grad_norm = torch.nn.utils.get_total_norm(grads, self.clip_grad_norm_type)
        self._check_finite(losses, grad_norm, loss_dict, context)
        return loss_dict, grad_norm

    def _check_finite(
        self,
        losses: torch.Tensor,
        grad_norm: torch.Tensor,
        loss_dict: dict[str, torch.Tensor],
        context: str,
    ) -> None:
        """Raise on every rank if any rank's loss or gradients are not finite.

        One [world_size, 2] flag tensor is summed over ranks and read once: the step's only
        host synchronisation besides logging.
        """
        flags = torch.zeros(comm.get_world_size(), 2, device=losses.device)
        flags[comm.get_rank(), 0] = (~torch.isfinite(losses.detach())).float()
        if self.grad_scaler is None:  # with fp16, the scaler skips steps with inf gradients
            flags[comm.get_rank(), 1] = (~torch.isfinite(grad_norm)).float()
        flags = comm.all_reduce_sum(flags).tolist()  # the one read
        if not any(map(any, flags)):
            return
        loss_ranks = [rank for rank, (loss, _) in enumerate(flags) if loss]
        grad_ranks = [rank for rank, (_, grads) in enumerate(flags) if grads]
        terms = ", ".join(f"{k}={v.detach().item():.4g}" for k, v in loss_dict.items())
        bad_grads = [
            name
            for name, p in self.model.named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        bad = " and ".join(
            f"{what} on rank(s) {ranks}"
            for what, ranks in (("loss", loss_ranks), ("gradients", grad_ranks))
            if ranks
        )
        grads = f"; non-finite gradients in {', '.join(bad_grads[:5])}" if bad_grads else ""
        raise FloatingPointError(
            f"Non-finite {bad} at {context}. Loss terms on rank "
            f"{comm.get_rank()}: {terms}{grads}. Training stopped before the optimizer step; "
            "the last checkpoint holds the last state verified finite."
        )

    def state_dict(self) -> dict:
        return {"grad_scaler": self.grad_scaler.state_dict()} if self.grad_scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
