"""Box helpers not in torchvision.ops (use its box_convert, generalized_box_iou)."""

from __future__ import annotations

import torch


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``logit(x)`` with ``x`` clamped to [0, 1] and ``x``, ``1 - x`` each to at least ``eps``.

    The clamp matters numerically: detrex (DAB-DETR) uses ``eps=1e-3``, Deformable-DETR and
    mmdet ``1e-5``; detectors pass the value of the recipe they reproduce.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] (cx, cy, w, h) -> Tensor[..., 4] (x1, y1, x2, y2); any leading shape."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] (x1, y1, x2, y2) -> Tensor[..., 4] (cx, cy, w, h); any leading shape."""
    low, high = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(low + high) / 2, high - low], dim=-1)
