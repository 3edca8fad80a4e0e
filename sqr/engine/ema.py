"""An exponential moving average of a model's weights, as RT-DETR and YOLO-family recipes keep.

After update ``n`` (one per optimizer step), every floating-point entry ``v`` of the averaged
copy's ``state_dict`` (parameters and persistent buffers such as BatchNorm running statistics)
is::

    d_n = decay * (1 - exp(-n / warmups))
    v <- d_n * v + (1 - d_n) * model_v

The warm-up ramp makes the early average follow the model closely (``d_1`` is about 5e-4 with
the defaults) and reaches ``decay`` after a few ``warmups``. Integer entries
(``num_batches_tracked``) keep the value they had when the copy was made, and non-persistent
buffers are constants: neither is averaged.

``torch.optim.swa_utils.AveragedModel`` is not used: its first update copies the model instead of
averaging with ``d_1``, it averages every buffer (integer and non-persistent ones included), and
its ``torch._foreach_lerp_`` rounds differently from the two-operation update above; the weights
would then differ from those of the reference recipe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA", "ema_enabled", "trained_weights"]


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


class ModelEMA:
    """An averaged copy of a model, updated with :meth:`update` after every optimizer step.

    Args:
        model: the trained model (a DistributedDataParallel wrapper is unwrapped); its current
            state starts the average.
        decay: the decay the ramp approaches, in [0, 1).
        warmups: the ramp's time constant, in updates (positive).

    Attributes:
        module: the averaged copy, in eval mode, without gradients; evaluate it like the model.
        updates: how many updates the average has had.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, warmups: int = 2000) -> None:
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be a number in [0, 1), got {decay!r}")
        if isinstance(warmups, bool) or not isinstance(warmups, int) or warmups <= 0:
            raise ValueError(f"EMA warmups must be a positive integer, got {warmups!r}")
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = float(decay)
        self.warmups = warmups
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay that update number ``updates`` (counted from 1) applies."""
        return self.decay * (1 - math.exp(-updates / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current state by one update."""
        self.updates += 1
        d = self.decay_at(self.updates)
        current = _unwrap(model).state_dict()
        # state_dict() tensors share storage with the copy's parameters and buffers, so the
        # in-place operations update the module itself.
        for key, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d)
                value.add_((1 - d) * current[key].detach())

    def state_dict(self) -> dict[str, Any]:
        """``{"module": the averaged weights, "updates": count}``: RT-DETR's ``ema`` entry."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output exactly (every tensor of the model required).

        Raises:
            ValueError: ``state`` is not an EMA state of this model (the message names what is
                wrong).
        """
        if not isinstance(state, Mapping) or not isinstance(state.get("module"), Mapping):
            raise ValueError("an EMA state must be a dict with a 'module' state_dict")
        updates = state.get("updates")
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ValueError(f"EMA state 'updates' must be a non-negative integer, got {updates!r}")
        try:
            self.module.load_state_dict(state["module"], strict=True)
        except RuntimeError as e:
            raise ValueError(f"the EMA state does not fit the model: {e}") from e
        self.updates = updates

    def __repr__(self) -> str:
        return f"ModelEMA(decay={self.decay}, warmups={self.warmups}, updates={self.updates})"


def ema_enabled(cfg: Mapping[str, Any]) -> bool:
    """Whether the config's ``train.ema`` asks for a moving average (configs without the key:
    no)."""
    ema = cfg.get("train", {}).get("ema")
    return bool(ema is not None and ema.get("enabled", False))


def trained_weights(cfg: Mapping[str, Any]) -> str:
    """Which weights of a checkpoint evaluate the config's model: ``"ema"`` where it trains a
    moving average (its evaluations use it), else ``"model"``."""
    return "ema" if ema_enabled(cfg) else "model"
