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
from sqr.modeling.set_prediction import (
    check_giou_eps,
    check_l1_box_format,
    check_predictions,
    l1_boxes,
    pad_targets,
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
