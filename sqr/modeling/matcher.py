"""Hungarian matching between query predictions and ground-truth boxes, batched over query groups.

Under SQR a decoder emits ``G`` prediction sets per image (one per query group), each of which is
matched to the ground truth on its own. Instead of building one cost matrix per (group, image)
pair, :class:`HungarianMatcher` pads the targets of every image to the batch maximum and computes
all ``G * B`` cost matrices in one batched pass on the predictions' device. A training step's
matchings (decoder groups, encoder proposals) are solved together: their costs reach the host in
one copy, ``scipy.optimize.linear_sum_assignment`` runs per pair, and all the assignments go back
to the device in one non-blocking copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from sqr.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from sqr.layers.constants import to_device_async
from sqr.modeling.set_prediction import (
    MatchedPairs,
    check_giou_eps,
    check_l1_box_format,
    check_predictions,
    l1_boxes,
    pad_targets,
)

#: One matching problem: logits Tensor[G, B, Q, K], boxes Tensor[G, B, Q, 4] and B target dicts.
Problem = tuple[Tensor, Tensor, Sequence[dict]]

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
        focal_eps: added to the probabilities inside the focal cost's logarithms,
            ``log(p + eps)`` and ``log(1 - p + eps)``: 1e-8 is detrex's matcher, 1e-12 mmdet's
            ``FocalLossCost`` (AdaMixer's reference). It matters only for p below ~1e-6.
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
        focal_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if not focal_eps > 0:  # also rejects NaN
            raise ValueError(f"focal_eps must be positive, got {focal_eps}")
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
        self.focal_eps = focal_eps

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}, l1_box_format={self.l1_box_format!r}, "
            f"giou_eps={self.giou_eps}, focal_eps={self.focal_eps}"
        )

    def forward(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict]) -> MatchedPairs:
        """Match every query group of every image to that image's targets.

        Args:
            pred_logits: Tensor[G, B, Q, K], raw classification logits.
            pred_boxes: Tensor[G, B, Q, 4], normalised cxcywh boxes.
            targets: ``B`` dicts with ``"labels"`` (int64 [N_b]) and ``"boxes"`` (float [N_b, 4],
                normalised cxcywh).

        Returns:
            The ``min(Q, N_b)`` pairs of each (group, image) (none where image ``b`` has no
            targets), on the predictions' device.

        Raises:
            ValueError: if the shapes disagree.
        """
        return self.match([(pred_logits, pred_boxes, targets)])[0]

    @torch.no_grad()
    def match(self, problems: Sequence[Problem]) -> list[MatchedPairs]:
        """:meth:`forward` for several matchings at once, with one device-to-host copy of all
        their costs and one non-blocking copy of all their assignments back.

        Args:
            problems: ``(pred_logits, pred_boxes, targets)`` of each matching, as
                :meth:`forward` takes them; all on one device.

        Returns:
            The pairs of each problem, in order.
        """
        device = problems[0][0].device
        costs, counts = [], []
        for pred_logits, pred_boxes, targets in problems:
            check_predictions(pred_logits, pred_boxes, targets)
            labels, boxes, _, n = pad_targets(targets, device)
            counts.append(n)
            # Nothing to assign: no cost to compute or copy.
            empty = pred_logits.shape[2] == 0 or max(n, default=0) == 0
            costs.append(None if empty else self._cost(pred_logits, pred_boxes, labels, boxes))
        present = [c for c in costs if c is not None]
        if not present:
            return [_no_pairs(device) for _ in problems]
        # The one device-to-host copy of the step's matchings.
        host = iter(
            torch.cat([c.flatten() for c in present]).cpu().split([c.numel() for c in present])
        )
        assigned = [
            np.zeros((4, 0), dtype=np.int64)
            if cost is None
            else assign_on_host(next(host).view(cost.shape), n)
            for cost, n in zip(costs, counts, strict=True)
        ]
        packed = to_device_async(torch.from_numpy(np.concatenate(assigned, axis=1)), device)
        return [
            MatchedPairs(*part.unbind(0))
            for part in packed.split([a.shape[1] for a in assigned], dim=1)
        ]

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
        eps = self.focal_eps
        neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + eps).log()
        pos = alpha * (1 - prob).pow(gamma) * -(prob + eps).log()
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


# Host code: torch.compile runs it as it is (one graph break) instead of tracing its numpy.
@torch.compiler.disable
def assign_on_host(cost: Tensor, counts: Sequence[int]) -> np.ndarray:
    """Solve every (group, image) assignment of one matching on the host.

    Args:
        cost: float CPU Tensor[G, B, Q, N_max], the matching costs (padded target columns past
            ``counts[b]`` are ignored).
        counts: ``N_b``, the targets of each image.

    Returns:
        int64 array [4, M]: the (group, image, query, target) of every pair, ordered by group,
        image and query.
    """
    # Non-finite predictions (a diverged model) must not stop the matching: any assignment
    # then gives a non-finite loss, and the trainer's check stops every rank together with
    # one error naming the iteration. Raising here would leave the other DDP ranks waiting
    # in the gradient all-reduce until the collective timeout.
    cost = torch.nan_to_num(cost, nan=_UNMATCHABLE, posinf=_UNMATCHABLE, neginf=-_UNMATCHABLE)
    cost_np = cost.numpy()
    pairs = []
    for g in range(cost_np.shape[0]):
        for b, n in enumerate(counts):
            if n == 0:
                continue
            # scipy returns the row (query) indices already sorted.
            rows, cols = linear_sum_assignment(cost_np[g, b, :, :n])
            pairs.append(np.stack([np.full_like(rows, g), np.full_like(rows, b), rows, cols]))
    if not pairs:
        return np.zeros((4, 0), dtype=np.int64)
    return np.concatenate(pairs, axis=1).astype(np.int64, copy=False)


def _no_pairs(device: torch.device) -> MatchedPairs:
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return MatchedPairs(empty, empty, empty, empty)
