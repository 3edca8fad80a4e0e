"""The loss terms of :class:`~sqr.modeling.criterion.SetCriterion`, one callable each.

A term takes the :class:`MatchedInputs` of one prediction set and returns its loss per query
group, Tensor[G], summed over the group's images, queries (and classes) and not yet weighted or
normalised: the criterion multiplies it by the term's weight and divides it by the step's target
count. Adding a loss is a callable with this signature plus a weight in ``weight_dict``::

    def area_loss(inputs: MatchedInputs) -> Tensor:
        pred, target = inputs.matched_boxes
        area = (pred[:, 2] * pred[:, 3] - target[:, 2] * target[:, 3]).abs()
        return inputs.per_group(area)

    SetCriterion(..., losses={"loss_area": area_loss}, weight_dict={..., "loss_area": 1.0})

Terms hold no parameters (learnable parts belong to the model) and see every set alike: a
decoder group, the encoder proposals and the denoising queries all go through the same terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from sqr.layers.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from sqr.modeling.set_prediction import MatchedPairs, check_giou_eps, check_l1_box_format, l1_boxes


@dataclass
class MatchedInputs:
    """One prediction set with its padded targets and matched pairs, in the loss dtype (at
    least float32).

    Attributes:
        logits: Tensor[G, B, Q, K], raw classification logits.
        boxes: Tensor[G, B, Q, 4], normalised cxcywh.
        labels: int64 Tensor[B, N_max], padded target labels.
        target_boxes: float32 Tensor[B, N_max, 4], padded normalised cxcywh targets.
        pairs: the matched (group, image, query, target) pairs, M of them.
    """

    logits: Tensor
    boxes: Tensor
    labels: Tensor
    target_boxes: Tensor
    pairs: MatchedPairs

    @property
    def num_groups(self) -> int:
        return self.logits.shape[0]

    @cached_property
    def matched_labels(self) -> Tensor:
        """int64 Tensor[M], the label of each pair's target."""
        return self.labels[self.pairs.image, self.pairs.target]

    @cached_property
    def matched_boxes(self) -> tuple[Tensor, Tensor]:
        """``(pred, target)``, each Tensor[M, 4] normalised cxcywh, in the predictions' dtype:
        gathered once and shared by every box term (one gather in the autograd graph)."""
        pred = self.boxes[self.pairs.group, self.pairs.image, self.pairs.query]
        target = self.target_boxes[self.pairs.image, self.pairs.target].to(pred.dtype)
        return pred, target

    def one_hot(self, values: Tensor | float = 1.0) -> Tensor:
        """Tensor like ``logits``: ``values`` (scalar or Tensor[M]) at each pair's query and
        target class, 0 elsewhere (unmatched queries and other classes)."""
        out = torch.zeros_like(self.logits)
        g, b, q, _ = self.pairs
        out[g, b, q, self.matched_labels] = values
        return out

    def per_group(self, pair_losses: Tensor) -> Tensor:
        """Sum Tensor[M] of per-pair losses into Tensor[G] by group."""
        return pair_losses.new_zeros(self.num_groups).index_add(0, self.pairs.group, pair_losses)

    def no_pairs(self) -> Tensor | None:
        """Zero Tensor[G] that still reaches ``boxes`` when nothing is matched (so backward works
        and every parameter producing boxes gets a zero gradient), else None."""
        if self.pairs.group.numel():
            return None
        return (self.boxes.sum() * 0).expand(self.num_groups)


LossTerm = Callable[[MatchedInputs], Tensor]
"""A loss term: :class:`MatchedInputs` to the unweighted loss per group, Tensor[G]."""


class FocalClassLoss:
    """Sigmoid focal loss against one-hot targets (matched queries: their target's class).

    Args:
        alpha: weight of the positives (``1 - alpha`` for the negatives).
        gamma: focusing exponent.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        self.alpha = alpha
        self.gamma = gamma

    def __repr__(self) -> str:
        return f"FocalClassLoss(alpha={self.alpha}, gamma={self.gamma})"

    def __call__(self, inputs: MatchedInputs) -> Tensor:
        loss = sigmoid_focal_loss(
            inputs.logits, inputs.one_hot(), self.alpha, self.gamma, reduction="none"
        )
        return loss.flatten(1).sum(dim=1)


class VarifocalClassLoss:
    """RT-DETR's varifocal class loss (``loss_labels_vfl``; VarifocalNet, Zhang et al. 2021).

    The target of a matched query's class is the IoU of its box with its target box (detached);
    every other entry has target 0. The binary cross-entropy on the logits is weighted by that IoU
    on the matched entries and by ``alpha * sigmoid(logit) ** gamma`` (detached) on the others.

    Args:
        alpha: weight of the negatives (RT-DETR: 0.75).
        gamma: focusing exponent of the negatives' weight (RT-DETR: 2).
    """

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0) -> None:
        self.alpha = alpha
        self.gamma = gamma

    def __repr__(self) -> str:
        return f"VarifocalClassLoss(alpha={self.alpha}, gamma={self.gamma})"

    def __call__(self, inputs: MatchedInputs) -> Tensor:
        pred, target = inputs.matched_boxes
        iou = _paired_iou(box_cxcywh_to_xyxy(pred.detach()), box_cxcywh_to_xyxy(target))
        positive = inputs.one_hot()
        score = inputs.one_hot(iou.to(inputs.logits.dtype))
        prob = inputs.logits.detach().sigmoid()
        weight = self.alpha * prob.pow(self.gamma) * (1 - positive) + score
        loss = F.binary_cross_entropy_with_logits(
            inputs.logits, score, weight=weight, reduction="none"
        )
        return loss.flatten(1).sum(dim=1)


class L1BoxLoss:
    """L1 distance of each matched box to its target.

    Args:
        box_format: ``"cxcywh"`` or ``"xyxy"``, the format the distance is measured in.
    """

    def __init__(self, box_format: str = "cxcywh") -> None:
        check_l1_box_format(box_format)
        self.box_format = box_format

    def __repr__(self) -> str:
        return f"L1BoxLoss(box_format={self.box_format!r})"

    def __call__(self, inputs: MatchedInputs) -> Tensor:
        zero = inputs.no_pairs()
        if zero is not None:
            return zero
        pred, target = inputs.matched_boxes
        diff = l1_boxes(pred, self.box_format) - l1_boxes(target, self.box_format)
        return inputs.per_group(diff.abs().sum(-1))


class GIoUBoxLoss:
    """``1 - GIoU`` of each matched box with its target.

    Args:
        eps: added to the union and the enclosing area
            (:func:`~sqr.layers.box_ops.elementwise_generalized_box_iou`).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        check_giou_eps(eps)
        self.eps = eps

    def __repr__(self) -> str:
        return f"GIoUBoxLoss(eps={self.eps})"

    def __call__(self, inputs: MatchedInputs) -> Tensor:
        zero = inputs.no_pairs()
        if zero is not None:
            return zero
        pred, target = inputs.matched_boxes
        # Pair by pair: the diagonal of detrex's M x M matrix without building it.
        giou = elementwise_generalized_box_iou(
            box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target), eps=self.eps
        )
        return inputs.per_group(1 - giou)


def _paired_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding xyxy boxes, Tensor[M] (the diagonal of torchvision's ``box_iou``,
    which builds the M x M matrix)."""
    low = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    high = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (high - low).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(dim=1)
    return inter / (area1 + area2 - inter)
