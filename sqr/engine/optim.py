"""Optimizer parameter groups: per-name learning-rate factors and no weight decay on norms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision.ops import FrozenBatchNorm2d

_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    FrozenBatchNorm2d,
)


def get_default_optimizer_params(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    lr_factors: Mapping[str, float] | None = None,
    weight_decay_bias: float | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` with the reference recipes' rules.

    Args:
        model: the model; frozen parameters (``requires_grad=False``) are left out.
        base_lr: learning rate before factors.
        weight_decay: weight decay of ordinary parameters.
        weight_decay_norm: weight decay of normalisation-layer parameters.
        lr_factors: ``{substring: factor}``; a parameter whose full name contains a substring
            gets ``base_lr * factor`` (the first match in the mapping's order wins), e.g.
            ``{"backbone": 0.1}`` for DETR's backbone rule.
        weight_decay_bias: weight decay of every bias (a parameter whose name ends in ``bias``:
            ``bias``, ``in_proj_bias``; norms' included), e.g. 0 for RT-DETRv2-R34's rule;
            None: no special case.

    Returns:
        One group per distinct (lr, weight decay), each ``{"params", "lr", "weight_decay"}``.
    """
    lr_factors = dict(lr_factors or {})
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for param_name, param in module.named_parameters(recurse=False):
            # Frozen weights (FrozenBN, freeze_at) are not optimised; this is about which
            # parameters train at all, never about train/eval mode.
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))  # a shared parameter belongs to the first module that owns it
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            factor = next((f for key, f in lr_factors.items() if key in full_name), 1.0)
            decay = weight_decay_norm if is_norm else weight_decay
            if weight_decay_bias is not None and param_name.endswith("bias"):
                decay = weight_decay_bias
            groups.setdefault((base_lr * factor, decay), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": decay}
        for (lr, decay), params in groups.items()
    ]
