"""Hungarian matching between query predictions and ground-truth boxes, batched over query groups.

Under SQR a decoder emits ``G`` prediction sets per image (one per query group), each of which is
matched to the ground truth on its own. Instead of building one cost matrix per (group, image)
pair, :class:`HungarianMatcher` pads the targets of every image to the batch maximum, computes all
``G * B`` cost matrices in one batched pass on the predictions' device, copies the result to the
host once and only then runs ``scipy.optimize.linear_sum_assignment`` per pair.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from sqr.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

L1_BOX_FORMATS = ("cxcywh", "xyxy")

# A full-image box: gives finite L1/GIoU costs in padded target columns, which are never read.
_PAD_BOX = (0.5, 0.5, 1.0, 1.0)


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
    boxes = torch.tensor(_PAD_BOX, dtype=torch.float32, device=device).repeat(num_images, n_max, 1)
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


#: Stands in for a NaN or infinite matching cost, so that scipy can still assign.
_UNMATCHABLE = 1e12


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth boxes for every (group, image) pair.

    The cost of assigning query ``q`` to target ``t`` is
    ``w_bbox * L1(q, t) + w_class * focal_cost(q, label_t) + w_giou * -GIoU(q, t)``, where the
    focal cost is the difference between the positive and negative focal-loss terms of the
    target's class (the DETR-family focal matching cost).

    Args:
        cost_class: weight of the classification cost.
        cost_bbox: weight of the L1 box cost.
        cost_giou: weight of the generalised-IoU cost.
        focal_alpha: ``alpha`` of the focal classification cost.
        focal_gamma: ``gamma`` of the focal classification cost.
        l1_box_format: ``"cxcywh"`` to take the L1 distance between the boxes as predicted, or
            ``"xyxy"`` to take it between their normalised corners (as AdaMixer does).
        giou_eps: added to the union and the enclosing area of the GIoU, on normalised boxes
            (:func:`~sqr.layers.box_ops.generalized_box_iou`). 1e-6 is detrex's matcher;
            0 is torchvision's GIoU, which is also what mmdet's recipes compute (their eps is a
            clamp on pixel areas that real boxes never reach).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        l1_box_format: str = "cxcywh",
        giou_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"matching cost weights must be non-negative, got {negative}")
        if all(v == 0 for v in weights.values()):
            raise ValueError(f"at least one matching cost weight must be non-zero, got {weights}")
        check_l1_box_format(l1_box_format)
        check_giou_eps(giou_eps)
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.l1_box_format = l1_box_format
        self.giou_eps = giou_eps

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}, l1_box_format={self.l1_box_format!r}, "
            f"giou_eps={self.giou_eps}"
        )

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict]
    ) -> list[list[tuple[Tensor, Tensor]]]:
        """Match every query group of every image to that image's targets.

        Args:
            pred_logits: Tensor[G, B, Q, K], raw classification logits.
            pred_boxes: Tensor[G, B, Q, 4], normalised cxcywh boxes.
            targets: ``B`` dicts with ``"labels"`` (int64 [N_b]) and ``"boxes"`` (float [N_b, 4],
                normalised cxcywh).

        Returns:
            ``indices[g][b] = (query_idx, target_idx)``, two int64 CPU tensors of length
            ``min(Q, N_b)`` sorted by query index; empty when image ``b`` has no targets.

        Raises:
            ValueError: if the shapes disagree.
        """
        check_predictions(pred_logits, pred_boxes, targets)
        num_groups, _, num_queries, _ = pred_logits.shape
        labels, boxes, _, counts = pad_targets(targets, pred_logits.device)
        empty = torch.zeros(0, dtype=torch.int64)
        if num_queries == 0 or max(counts, default=0) == 0:
            # Nothing to assign: skip the cost computation and its device sync entirely.
            return [[(empty.clone(), empty.clone()) for _ in counts] for _ in range(num_groups)]

        # [G, B, Q, N_max]; one device-to-host copy for all pairs.
        cost = self._cost(pred_logits, pred_boxes, labels, boxes).cpu()
        # Non-finite predictions (a diverged model) must not stop the matching: any assignment
        # then gives a non-finite loss, and the trainer's check stops every rank together with
        # one error naming the iteration. Raising here would leave the other DDP ranks waiting
        # in the gradient all-reduce until the collective timeout.
        cost = torch.nan_to_num(cost, nan=_UNMATCHABLE, posinf=_UNMATCHABLE, neginf=-_UNMATCHABLE)

        cost_np = cost.numpy()
        indices: list[list[tuple[Tensor, Tensor]]] = []
        for g in range(num_groups):
            per_image = []
            for b, n in enumerate(counts):
                if n == 0:
                    per_image.append((empty.clone(), empty.clone()))
                    continue
                # scipy returns the row (query) indices already sorted.
                rows, cols = linear_sum_assignment(cost_np[g, b, :, :n])
                per_image.append(
                    (
                        torch.as_tensor(rows, dtype=torch.int64),
                        torch.as_tensor(cols, dtype=torch.int64),
                    )
                )
            indices.append(per_image)
        return indices

    def _cost(
        self, pred_logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor
    ) -> Tensor:
        """Batched matching cost of every query against every (padded) target of its own image.

        Args:
            pred_logits: Tensor[G, B, Q, K].
            pred_boxes: Tensor[G, B, Q, 4], normalised cxcywh.
            labels: int64 Tensor[B, N_max].
            boxes: Tensor[B, N_max, 4], normalised cxcywh.

        Returns:
            float32 Tensor[G, B, Q, N_max].
        """
        num_groups, num_images, num_queries, _ = pred_logits.shape
        n_max = labels.shape[1]
        # float32 even under autocast: costs of close candidates must stay distinguishable.
        logits = pred_logits.float()
        pred = pred_boxes.float()
        tgt = boxes[None].expand(num_groups, num_images, n_max, 4)

        # Gather the probability of each target's class first, so the focal terms are evaluated
        # on [G, B, Q, N_max] rather than on all K classes.
        gather_idx = labels[None, :, None, :].expand(num_groups, num_images, num_queries, n_max)
        prob = logits.sigmoid().gather(-1, gather_idx)
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
        cost_class = pos - neg

        cost_bbox = torch.cdist(
            l1_boxes(pred, self.l1_box_format), l1_boxes(tgt, self.l1_box_format), p=1
        )
        # generalized_box_iou broadcasts over the leading [G, B] dims: [G, B, Q, N_max].
        cost_giou = -generalized_box_iou(
            box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt), eps=self.giou_eps
        )

        return (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )
