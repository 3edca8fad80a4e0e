"""Box helpers not in torchvision.ops (use its box_convert, box_area, sigmoid_focal_loss).

The generalised IoU is here rather than taken from ``torchvision.ops.generalized_box_iou``
because the recipes' GIoU is not torchvision's: detrex (``detrex/layers/box_ops.py``, from DETR's
``util/box_ops.py``) adds ``1e-6`` to the union and to the enclosing area, which torchvision does
not; with ``eps=0`` the functions below give torchvision's values bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors upcast to float32; float32 and float64 unchanged (no copy)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``logit(x)`` with ``x`` clamped to [0, 1] and ``x``, ``1 - x`` each to at least ``eps``.

    The clamp matters numerically: detrex (DAB-DETR) uses ``eps=1e-3``, Deformable-DETR and
    mmdet ``1e-5``; detectors pass the value of the recipe they reproduce. Computed in at least
    float32: in bfloat16, ``1 - x`` near a border and the clamp to ``1e-5`` are lost (boxes move
    by pixels).
    """
    x = at_least_float32(x).clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] (cx, cy, w, h) -> Tensor[..., 4] (x1, y1, x2, y2); any leading shape."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def refine_boxes(delta: torch.Tensor, reference: torch.Tensor, eps: float) -> torch.Tensor:
    """The DETR family's iterative box refinement, ``sigmoid(delta + logit(reference))``.

    Args:
        delta: Tensor[..., 4] box head output (logit space).
        reference: Tensor[..., 2] points (only cx, cy are offset; w, h come from the head alone)
            or Tensor[..., 4] boxes, normalised cxcywh.
        eps: clamp of the inverse sigmoid.

    Returns:
        Tensor[..., 4] normalised cxcywh boxes, in at least float32 (under autocast too: the
        boxes are the references of the next layer and the matching's inputs).
    """
    logit = inverse_sigmoid(reference, eps)
    if reference.shape[-1] == 2:
        logit = torch.nn.functional.pad(logit, (0, 2))
    return (at_least_float32(delta) + logit).sigmoid()


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """Tensor[..., 4] (x1, y1, x2, y2) -> Tensor[..., 4] (cx, cy, w, h); any leading shape."""
    low, high = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(low + high) / 2, high - low], dim=-1)


def box_cxcywh_to_absolute_xyxy(
    boxes: Tensor, height: float | Tensor, width: float | Tensor, *, clip: bool
) -> Tensor:
    """Normalised (cx, cy, w, h) -> (x1, y1, x2, y2) in pixels of a ``height`` x ``width`` image:
    the post-processing of every detector output and of every stage's predictions.

    Args:
        boxes: Tensor[..., 4], (cx, cy, w, h) as fractions of the image's width and height.
        height: output image height, in pixels: a number, or a Tensor that broadcasts against
            ``boxes[..., 0]`` (``[B, 1]`` for boxes ``[B, k, 4]``: one height per image).
        width: output image width, in pixels, likewise.
        clip: clamp the corners to the image, as detectron2's post-processing does (mmdet's
            AdaMixer does not).

    Returns:
        Tensor[..., 4], (x1, y1, x2, y2) in pixels; a new tensor, ``boxes`` is left unchanged.
    """
    height, width = (
        torch.as_tensor(v, dtype=boxes.dtype, device=boxes.device) for v in (height, width)
    )
    whwh = torch.stack([width, height, width, height], dim=-1)
    xyxy = box_cxcywh_to_xyxy(boxes) * whwh
    if clip:
        xyxy = torch.minimum(xyxy.clamp(min=0), whwh)
    return xyxy


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Pairwise generalised IoU, with torchvision's broadcasting over leading dims.

    Args:
        boxes1: Tensor[..., N, 4], (x1, y1, x2, y2).
        boxes2: Tensor[..., M, 4], (x1, y1, x2, y2); leading dims broadcast with ``boxes1``'s.
        eps: added to the union and to the enclosing area, see
            :func:`elementwise_generalized_box_iou`.

    Returns:
        Tensor[..., N, M], float32 or float64.
    """
    return elementwise_generalized_box_iou(boxes1[..., :, None, :], boxes2[..., None, :, :], eps)


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Generalised IoU of corresponding boxes: the diagonal of :func:`generalized_box_iou`
    without the N x M matrix (the set loss's case).

    Computed as detrex does it: ``inter / (union + eps) - (hull - union) / (hull + eps)``, the raw
    union in the numerator. ``eps=0`` is torchvision's formula. mmdet instead clamps
    (``max(union, eps)``, ``max(hull, eps)``) on pixel boxes, where that never binds for real
    boxes: its recipes match ``eps=0`` on the normalised boxes used here.

    Args:
        boxes1: Tensor[..., 4], (x1, y1, x2, y2).
        boxes2: Tensor[..., 4], (x1, y1, x2, y2), broadcastable with ``boxes1``.
        eps: added to the union and the enclosing area; it keeps the value finite for empty
            boxes and, on normalised boxes, lowers the IoU of small ones measurably
            (by about ``eps / union`` relative).

    Returns:
        Tensor[...], float32 or float64 (half precision is upcast, as torchvision does: an
        ``eps`` of 1e-6 and the areas of small normalised boxes are below its resolution).
    """
    if boxes1.dtype not in (torch.float32, torch.float64):
        boxes1 = boxes1.float()
    if boxes2.dtype not in (torch.float32, torch.float64):
        boxes2 = boxes2.float()
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    overlap = torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(
        boxes1[..., :2], boxes2[..., :2]
    )
    overlap = overlap.clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = area1 + area2 - inter
    hull_wh = torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(
        boxes1[..., :2], boxes2[..., :2]
    )
    hull_wh = hull_wh.clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return inter / (union + eps) - (hull - union) / (hull + eps)
