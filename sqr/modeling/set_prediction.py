"""What the Hungarian matcher and the set criterion share: the shapes of their inputs, the
targets batched into padded tensors, the matched pairs one hands the other, and the options of
the box distances both measure.

Both modules take the same predictions and targets and measure the same L1 and GIoU distances
(one as a matching cost, the other as a loss); checking and applying those options in one place
keeps the cost and the loss from disagreeing about what they measure.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sqr.layers.box_ops import box_cxcywh_to_xyxy

L1_BOX_FORMATS = ("cxcywh", "xyxy")

# A full-image box (cx = cy = 0.5, w = h = 1): gives finite L1/GIoU costs in padded target
# columns, which are never read.
_PAD_CENTRE, _PAD_SIZE = 0.5, 1.0


class MatchedPairs(NamedTuple):
    """Every matched (query, target) pair of every (group, image), as four int64 Tensor[M] on
    the predictions' device, ordered by group, then image, then query.

    Attributes:
        group: the query group of each pair.
        image: the image of each pair.
        query: the query index within its group.
        target: the target index within its image (a row of the padded targets).
    """

    group: Tensor
    image: Tensor
    query: Tensor
    target: Tensor

    def of(self, group: int, image: int) -> tuple[Tensor, Tensor]:
        """``(query, target)`` of the pairs of one (group, image), in query order."""
        keep = (self.group == group) & (self.image == image)
        return self.query[keep], self.target[keep]


def check_giou_eps(giou_eps: float) -> None:
    """Raise ``ValueError`` unless ``giou_eps`` is non-negative."""
    if not giou_eps >= 0:  # also rejects NaN
        raise ValueError(f"giou_eps must be non-negative, got {giou_eps}")


def check_l1_box_format(l1_box_format: str) -> None:
    """Raise ``ValueError`` unless ``l1_box_format`` is one of :data:`L1_BOX_FORMATS`."""
    if l1_box_format not in L1_BOX_FORMATS:
        raise ValueError(f"l1_box_format must be one of {L1_BOX_FORMATS}, got {l1_box_format!r}")


def l1_boxes(boxes_cxcywh: Tensor, l1_box_format: str) -> Tensor:
    """Express normalised cxcywh boxes in the format their L1 distance is measured in.

    Args:
        boxes_cxcywh: Tensor[..., 4], normalised (cx, cy, w, h).
        l1_box_format: ``"cxcywh"`` (returned unchanged) or ``"xyxy"``.

    Returns:
        Tensor[..., 4] in ``l1_box_format``.
    """
    return boxes_cxcywh if l1_box_format == "cxcywh" else box_cxcywh_to_xyxy(boxes_cxcywh)


def pad_targets(
    targets: list[dict[str, Tensor]], device: torch.device
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Stack per-image targets into padded tensors.

    Args:
        targets: ``B`` dicts with ``"labels"`` (int64 [N_b]) and ``"boxes"`` (float [N_b, 4],
            normalised cxcywh).
        device: device of the returned tensors.

    Returns:
        ``(labels, boxes, valid, counts)``: labels int64 [B, N_max] (0 in padding), boxes float32
        [B, N_max, 4] (a full-image box in padding), valid bool [B, N_max] and the ``N_b`` as a
        list of ints. ``N_max`` is ``max(N_b)`` (0 when every image is empty).
    """
    counts = [int(t["labels"].shape[0]) for t in targets]
    for b, t in enumerate(targets):
        if tuple(t["boxes"].shape) != (counts[b], 4):
            raise ValueError(
                f"targets[{b}]['boxes'] must have shape ({counts[b]}, 4) to match its "
                f"{counts[b]} labels, got {tuple(t['boxes'].shape)}"
            )
    num_images, n_max = len(targets), max(counts, default=0)
    labels = torch.zeros(num_images, n_max, dtype=torch.int64, device=device)
    # Two fills, not a table copied from the host (a host-device synchronisation on CUDA).
    boxes = torch.full((num_images, n_max, 4), _PAD_SIZE, dtype=torch.float32, device=device)
    boxes[..., :2] = _PAD_CENTRE
    valid = torch.zeros(num_images, n_max, dtype=torch.bool, device=device)
    for b, (t, n) in enumerate(zip(targets, counts, strict=True)):
        labels[b, :n] = t["labels"].to(device=device, dtype=torch.int64)
        boxes[b, :n] = t["boxes"].to(device=device, dtype=torch.float32)
        valid[b, :n] = True
    return labels, boxes, valid, counts


def check_predictions(pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict]) -> None:
    """Raise ``ValueError`` unless logits are [G, B, Q, K], boxes [G, B, Q, 4] and ``len(targets)
    == B``."""
    if pred_logits.dim() != 4:
        raise ValueError(f"pred_logits must be [G, B, Q, K], got shape {tuple(pred_logits.shape)}")
    if pred_boxes.shape != (*pred_logits.shape[:3], 4):
        raise ValueError(
            f"pred_boxes must be [G, B, Q, 4] = {(*pred_logits.shape[:3], 4)} to match "
            f"pred_logits {tuple(pred_logits.shape)}, got {tuple(pred_boxes.shape)}"
        )
    if len(targets) != pred_logits.shape[1]:
        raise ValueError(
            f"got {len(targets)} target dicts for a batch of {pred_logits.shape[1]} images"
        )
