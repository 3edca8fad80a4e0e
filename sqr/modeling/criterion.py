"""Set-prediction losses for every query group of an SQR decoder, reported per decoder stage.

Every group is matched on its own (:class:`~sqr.modeling.matcher.HungarianMatcher`) and gets the
same focal classification, L1 box and GIoU losses with the same weights; the losses of all groups
are computed in one vectorised pass and then summed over the groups of each stage. A later stage
therefore weighs more only because SQR gives it more groups.

Every loss is divided by the average target count per process (:meth:`SetCriterion.num_boxes`,
an all-reduce). A detector takes it once per step and gives it to every loss call of that step,
so that every rank makes the same collectives whatever its batch holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from sqr.layers.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from sqr.layers.constants import constant_tensor
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.set_prediction import (
    MatchedPairs,
    check_giou_eps,
    check_l1_box_format,
    check_predictions,
    l1_boxes,
    pad_targets,
)
from sqr.utils.comm import all_reduce_sum, get_world_size

LOSS_NAMES = ("loss_class", "loss_bbox", "loss_giou")
DEFAULT_WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


class SetCriterion(nn.Module):
    """Focal, L1 and GIoU losses over Hungarian-matched query groups.

    Args:
        num_classes: number of foreground classes ``K`` (the last dim of the logits).
        matcher: assigns queries to targets for every (group, image) pair.
        weight_dict: weight of each of ``"loss_class"``, ``"loss_bbox"`` and ``"loss_giou"``;
            all three must be given. Defaults to ``{"loss_class": 1, "loss_bbox": 5,
            "loss_giou": 2}``.
        focal_alpha: ``alpha`` of the sigmoid focal loss.
        focal_gamma: ``gamma`` of the sigmoid focal loss.
        l1_box_format: ``"cxcywh"`` or ``"xyxy"``, the box format the L1 loss is measured in.
        giou_eps: added to the union and the enclosing area of the GIoU, on normalised boxes
            (:func:`~sqr.layers.box_ops.elementwise_generalized_box_iou`). 1e-6 is detrex's
            loss; 0 is torchvision's GIoU, which is also what mmdet's recipes compute (their eps
            is a clamp on pixel areas that real boxes never reach).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        l1_box_format: str = "cxcywh",
        giou_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        weights = dict(DEFAULT_WEIGHTS if weight_dict is None else weight_dict)
        if set(weights) != set(LOSS_NAMES):
            raise ValueError(
                f"weight_dict must have exactly the keys {list(LOSS_NAMES)}, got {sorted(weights)}"
            )
        check_l1_box_format(l1_box_format)
        check_giou_eps(giou_eps)
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = {k: float(weights[k]) for k in LOSS_NAMES}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.l1_box_format = l1_box_format
        self.giou_eps = giou_eps

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weight_dict={self.weight_dict}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, "
            f"l1_box_format={self.l1_box_format!r}, giou_eps={self.giou_eps}"
        )

    def forward(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        targets: list[dict[str, Tensor]],
        group_stage: Sequence[int],
        num_boxes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Weighted losses of all query groups, summed per decoder stage.

        Args:
            pred_logits: Tensor[G, B, Q, K], raw classification logits.
            pred_boxes: Tensor[G, B, Q, 4], normalised cxcywh boxes.
            targets: ``B`` dicts with ``"labels"`` (int64 [N_b]) and ``"boxes"`` (float [N_b, 4],
                normalised cxcywh).
            group_stage: length ``G``, the decoder stage of each group.
            num_boxes: the step's :meth:`num_boxes`; None takes it here (a collective: a caller
                with several loss calls per step takes it once and passes it to each).

        Returns:
            ``{f"{name}_s{stage}": scalar}`` for each name in :data:`LOSS_NAMES` and each stage
            that appears in ``group_stage``; each value is the weighted loss summed over the
            groups of that stage.
        """
        self._check(pred_logits, pred_boxes, targets, group_stage)
        pairs = self.matcher(pred_logits, pred_boxes, targets)
        return self.matched_losses(pred_logits, pred_boxes, targets, group_stage, pairs, num_boxes)

    def joint_losses(
        self,
        calls: Sequence[tuple[Tensor, Tensor, list[dict[str, Tensor]], Sequence[int]]],
        num_boxes: Tensor,
    ) -> list[dict[str, Tensor]]:
        """:meth:`forward` for every loss call of one step (decoder groups, encoder proposals)
        with their matchings solved together: one device-to-host copy for all of them.

        Args:
            calls: ``(pred_logits, pred_boxes, targets, group_stage)`` of each call.
            num_boxes: the step's :meth:`num_boxes`.

        Returns:
            The losses of each call, in order, as :meth:`forward` returns them.
        """
        for logits, boxes, targets, group_stage in calls:
            self._check(logits, boxes, targets, group_stage)
        pairs = self.matcher.match(
            [(logits, boxes, targets) for logits, boxes, targets, _ in calls]
        )
        return [
            self.matched_losses(*call, matched, num_boxes)
            for call, matched in zip(calls, pairs, strict=True)
        ]

    def num_boxes(self, targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """Average number of target boxes per process, at least 1 (a 0-d float32 tensor on the
        targets' device): one all-reduce, which every rank must make once per step.

        Args:
            targets: this process's targets of the step (``"labels"`` of each image).
        """
        if not targets:
            raise ValueError("num_boxes needs the targets of at least one image")
        count = float(sum(int(t["labels"].shape[0]) for t in targets))
        # A fill on the device, not a host scalar copied to it (a synchronisation on CUDA).
        local = torch.full((), count, dtype=torch.float32, device=targets[0]["labels"].device)
        return (all_reduce_sum(local) / get_world_size()).clamp(min=1)

    def matched_losses(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        targets: list[dict[str, Tensor]],
        group_stage: Sequence[int],
        pairs: MatchedPairs,
        num_boxes: Tensor | None = None,
        num_boxes_factor: float = 1.0,
    ) -> dict[str, Tensor]:
        """:meth:`forward` with the assignment given instead of matched: for matchings solved
        together (:meth:`HungarianMatcher.match`) and for queries whose targets are fixed by
        construction (DINO's denoising queries).

        Args:
            pred_logits, pred_boxes, targets, group_stage, num_boxes: as in :meth:`forward`.
            pairs: the matched pairs, on the predictions' device.
            num_boxes_factor: the losses are divided by ``num_boxes * num_boxes_factor``, for
                supervision that repeats each target that many times.

        Returns:
            As :meth:`forward`.
        """
        stages = self._check(pred_logits, pred_boxes, targets, group_stage)
        device = pred_logits.device
        labels, boxes, _, _ = pad_targets(targets, device)
        if num_boxes is None:
            num_boxes = self.num_boxes(targets)
        num_boxes = num_boxes * num_boxes_factor
        g_idx, b_idx, q_idx, t_idx = pairs

        # Loss math in at least float32: half-precision sums over G * B * Q * K terms lose too
        # much, and the GIoU upcasts anyway. Gradients flow back through the casts.
        dtype = torch.promote_types(
            torch.promote_types(pred_logits.dtype, pred_boxes.dtype), torch.float32
        )
        per_group = torch.stack(
            [
                self._class_loss(pred_logits.to(dtype), labels, g_idx, b_idx, q_idx, t_idx),
                *self._box_losses(pred_boxes.to(dtype), boxes, g_idx, b_idx, q_idx, t_idx),
            ],
            dim=1,
        )  # [G, 3] in LOSS_NAMES order
        weights = constant_tensor(per_group, [self.weight_dict[k] for k in LOSS_NAMES])
        per_group = per_group * (weights / num_boxes)

        # Sum each stage's groups with index_add (not a membership matmul, which would let a
        # NaN in one stage leak into all of them): [S_present, 3].
        present = sorted(set(stages))
        position = {stage: i for i, stage in enumerate(present)}
        stage_pos = constant_tensor(per_group, [position[s] for s in stages], dtype=torch.int64)
        per_stage = per_group.new_zeros(len(present), len(LOSS_NAMES)).index_add(
            0, stage_pos, per_group
        )
        return {
            f"{name}_s{stage}": per_stage[i, j]
            for i, stage in enumerate(present)
            for j, name in enumerate(LOSS_NAMES)
        }

    def _check(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        targets: list[dict[str, Tensor]],
        group_stage: Sequence[int],
    ) -> list[int]:
        """Raise ValueError on inconsistent inputs; the stages of the groups as ints."""
        check_predictions(pred_logits, pred_boxes, targets)
        num_groups = pred_logits.shape[0]
        stages = [int(s) for s in group_stage]
        if len(stages) != num_groups:
            raise ValueError(
                f"group_stage has {len(stages)} entries but the predictions have "
                f"{num_groups} query groups"
            )
        if any(s < 0 for s in stages):
            raise ValueError(f"group_stage entries must be non-negative, got {stages}")
        if pred_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits has {pred_logits.shape[-1]} classes, expected num_classes="
                f"{self.num_classes}"
            )
        return stages

    def _class_loss(
        self,
        pred_logits: Tensor,
        labels: Tensor,
        g_idx: Tensor,
        b_idx: Tensor,
        q_idx: Tensor,
        t_idx: Tensor,
    ) -> Tensor:
        """Unnormalised focal loss per group.

        Args:
            pred_logits: Tensor[G, B, Q, K].
            labels: int64 Tensor[B, N_max], padded target labels.
            g_idx, b_idx, q_idx, t_idx: int64 Tensor[M], the matched pairs.

        Returns:
            Tensor[G], the focal loss summed over images, queries and classes.
        """
        onehot = torch.zeros_like(pred_logits)
        onehot[g_idx, b_idx, q_idx, labels[b_idx, t_idx]] = 1.0
        loss = sigmoid_focal_loss(
            pred_logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none"
        )
        return loss.flatten(1).sum(dim=1)

    def _box_losses(
        self,
        pred_boxes: Tensor,
        boxes: Tensor,
        g_idx: Tensor,
        b_idx: Tensor,
        q_idx: Tensor,
        t_idx: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Unnormalised L1 and GIoU losses per group.

        Args:
            pred_boxes: Tensor[G, B, Q, 4], normalised cxcywh.
            boxes: Tensor[B, N_max, 4], padded normalised cxcywh targets.
            g_idx, b_idx, q_idx, t_idx: int64 Tensor[M], the matched pairs.

        Returns:
            ``(l1, giou)``, each Tensor[G]: the L1 distance and ``1 - GIoU`` summed over the
            group's matched pairs.
        """
        num_groups = pred_boxes.shape[0]
        if g_idx.numel() == 0:
            # No matches anywhere: zero losses that still reach pred_boxes, so backward works
            # and every parameter producing boxes gets a (zero) gradient.
            zero = pred_boxes.sum() * 0
            return zero.expand(num_groups), zero.expand(num_groups)
        src = pred_boxes[g_idx, b_idx, q_idx]  # [M, 4]
        tgt = boxes[b_idx, t_idx].to(src.dtype)  # [M, 4]
        l1 = (l1_boxes(src, self.l1_box_format) - l1_boxes(tgt, self.l1_box_format)).abs().sum(-1)
        # Pair by pair: the diagonal of detrex's M x M matrix without building it.
        giou = elementwise_generalized_box_iou(
            box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt), eps=self.giou_eps
        )
        giou_loss = 1 - giou
        zeros = pred_boxes.new_zeros(num_groups)
        return zeros.index_add(0, g_idx, l1), zeros.index_add(0, g_idx, giou_loss)
