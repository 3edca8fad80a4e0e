"""fvcore FLOP formulas and the tracing wrapper of :mod:`sqr.tools.analyze_model`.

Apart from the command so that its ``--help`` does not import torch.
"""

from __future__ import annotations

import torch
from fvcore.nn.jit_handles import get_shape
from torch import nn

__all__ = ["SingleImage", "attention_flops", "grid_sample_flops", "is_elementwise"]


def attention_flops(inputs: list, outputs: list) -> int:
    """``scaled_dot_product_attention``: its two matrix products, ``L*S*(E + Ev)`` per batch
    and head."""
    query, key, value = (get_shape(x) for x in inputs[:3])
    batch_heads = 1
    for size in query[:-2]:
        batch_heads *= size
    return batch_heads * query[-2] * key[-2] * (query[-1] + value[-1])


def grid_sample_flops(inputs: list, outputs: list) -> int:
    """``grid_sampler_2d``: bilinear sampling, 4 multiply-adds per output element."""
    elements = 1
    for size in get_shape(outputs[0]):
        elements *= size
    return 4 * elements


# Cheap (elementwise, reduction or layout) operators, left out of the count as fvcore does.
_ELEMENTWISE = (
    "add",
    "sub",
    "mul",
    "div",
    "rsub",
    "neg",
    "pow",
    "sqrt",
    "rsqrt",
    "exp",
    "log",
    "sigmoid",
    "softmax",
    "relu",
    "gelu",
    "sin",
    "cos",
    "cumsum",
    "sum",
    "mean",
    "max",
    "min",
    "minimum",
    "clamp",
    "fill",
    "ones_like",
    "topk",
    "meshgrid",
    "pad",
    "max_pool2d",
    "floor",
    "ceil",
    "abs",
    "where",
)


def is_elementwise(op: str) -> bool:
    """Whether fvcore leaves ``op`` (``aten::name``) out of the count, as a cheap operator."""
    return op.removeprefix("aten::").rstrip("_") in _ELEMENTWISE


class SingleImage(nn.Module):
    """A detector called on one uint8 image tensor, returning tensors (what a tracer needs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = image.shape[-2:]
        output = self.model([{"image": image, "height": height, "width": width}])[0]
        return output["boxes"], output["scores"]
