"""Set-prediction losses of every prediction set of a detector, reported per decoder stage.

A detector hands the criterion its :class:`PredictionSet`\\ s: the decoder's query groups, and
where it has them the encoder proposals and the denoising queries. Each set has its own targets,
its own key suffix and either an assignment fixed by construction or none, in which case every
group is matched on its own (:class:`~sqr.modeling.matcher.HungarianMatcher`); the sets that need
matching are matched together, with one device-to-host copy per step.

Every set goes through the same loss terms (:mod:`sqr.modeling.losses`; focal class, L1 box and
GIoU by default), named and weighted by ``weight_dict``. The losses of all groups of a set are
computed in one vectorised pass and then summed over the groups of each stage: a later stage
weighs more only because SQR gives it more groups.

Every loss is divided by the average target count per process (:meth:`SetCriterion.num_boxes`,
an all-reduce). A detector takes it once per step and gives it to every loss call of that step,
so that every rank makes the same collectives whatever its batch holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sqr.layers.constants import constant_tensor
from sqr.modeling.losses import (
    FocalClassLoss,
    GIoUBoxLoss,
    L1BoxLoss,
    LossTerm,
    MatchedInputs,
)
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.set_prediction import (
    MatchedPairs,
    check_giou_eps,
    check_l1_box_format,
    check_predictions,
    pad_targets,
)
from sqr.utils.comm import all_reduce_sum, get_world_size

DEFAULT_WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


@dataclass(frozen=True)
class PredictionSet:
    """One set of query predictions to supervise, with what its losses need.

    Attributes:
        logits: Tensor[G, B, Q, K], raw classification logits.
        boxes: Tensor[G, B, Q, 4], normalised cxcywh boxes.
        targets: ``B`` dicts with ``"labels"`` (int64 [N_b]) and ``"boxes"`` (float [N_b, 4],
            normalised cxcywh).
        group_stage: length ``G``, the decoder stage of each group.
        suffix: appended to each loss name, ``{stage}`` replaced by the stage: ``"_s{stage}"``
            (decoder groups), ``"_dn_s{stage}"`` (denoising), ``"_enc"`` (encoder proposals: a
            suffix without ``{stage}`` takes groups of one stage only).
        pairs: the assignment when it is fixed by construction (on the predictions' device);
            None: Hungarian-matched.
        num_boxes_factor: the losses are divided by ``num_boxes * num_boxes_factor``, for
            supervision that repeats each target that many times.
    """

    logits: Tensor
    boxes: Tensor
    targets: list[dict[str, Tensor]]
    group_stage: Sequence[int]
    suffix: str = "_s{stage}"
    pairs: MatchedPairs | None = None
    num_boxes_factor: float = 1.0

    def __post_init__(self) -> None:
        try:
            self.suffix.format(stage=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"suffix {self.suffix!r} may hold no placeholder other than {{stage}}"
            ) from e

    def key(self, name: str, stage: int) -> str:
        """The loss key of term ``name`` at ``stage``."""
        return name + self.suffix.format(stage=stage)


def default_losses(
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    l1_box_format: str = "cxcywh",
    giou_eps: float = 1e-6,
) -> dict[str, LossTerm]:
    """The DETR family's terms: ``loss_class`` (focal), ``loss_bbox`` (L1), ``loss_giou``."""
    return {
        "loss_class": FocalClassLoss(focal_alpha, focal_gamma),
        "loss_bbox": L1BoxLoss(l1_box_format),
        "loss_giou": GIoUBoxLoss(giou_eps),
    }


class SetCriterion(nn.Module):
    """Named, weighted loss terms over the Hungarian-matched (or fixed) query groups of every
    prediction set.

    Args:
        num_classes: number of foreground classes ``K`` (the last dim of the logits).
        matcher: assigns queries to targets for every (group, image) pair.
        weight_dict: the weight of every loss term, by name, and nothing else. Defaults to
            ``{"loss_class": 1, "loss_bbox": 5, "loss_giou": 2}``.
        focal_alpha: ``alpha`` of the default ``loss_class`` (sigmoid focal loss).
        focal_gamma: ``gamma`` of the default ``loss_class``.
        l1_box_format: ``"cxcywh"`` or ``"xyxy"``, the box format the default ``loss_bbox``
            (L1) is measured in.
        giou_eps: added to the union and the enclosing area of the default ``loss_giou``, on
            normalised boxes (:func:`~sqr.layers.box_ops.elementwise_generalized_box_iou`).
            1e-6 is detrex's loss; 0 is torchvision's GIoU, which is also what mmdet's recipes
            compute (their eps is a clamp on pixel areas that real boxes never reach).
        losses: loss terms by name (:data:`~sqr.modeling.losses.LossTerm`), over the defaults
            built from the four options above: a name already there replaces that term (e.g.
            ``{"loss_class": VarifocalClassLoss()}``), a new name adds one.
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
        losses: Mapping[str, LossTerm] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        check_l1_box_format(l1_box_format)
        check_giou_eps(giou_eps)
        terms = {**default_losses(focal_alpha, focal_gamma, l1_box_format, giou_eps)}
        for name, term in (losses or {}).items():
            if not callable(term):
                raise ValueError(f"losses[{name!r}] must be callable, got {term!r}")
            terms[name] = term
        weights = dict(DEFAULT_WEIGHTS if weight_dict is None else weight_dict)
        if set(weights) != set(terms):
            raise ValueError(
                f"weight_dict must have exactly the keys of the loss terms {sorted(terms)}, got "
                f"{sorted(weights)}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.terms = terms
        self.weight_dict = {k: float(weights[k]) for k in terms}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.l1_box_format = l1_box_format
        self.giou_eps = giou_eps

    def extra_repr(self) -> str:
        terms = ", ".join(f"{k}={v!r}" for k, v in self.terms.items())
        return f"num_classes={self.num_classes}, weight_dict={self.weight_dict}, terms=({terms})"

    def forward(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        targets: list[dict[str, Tensor]],
        group_stage: Sequence[int],
        num_boxes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Weighted losses of the decoder's query groups, summed per decoder stage: the
        :meth:`set_losses` of one Hungarian-matched set.

        Args:
            pred_logits, pred_boxes, targets, group_stage: as in :class:`PredictionSet`.
            num_boxes: the step's :meth:`num_boxes`; None takes it here (a collective: a caller
                with several loss calls per step takes it once and passes it to each).

        Returns:
            ``{f"{name}_s{stage}": scalar}`` for each loss term and each stage that appears in
            ``group_stage``; each value is the weighted loss summed over the groups of that stage.
        """
        return self.set_losses(
            [PredictionSet(pred_logits, pred_boxes, targets, group_stage)], num_boxes
        )

    def set_losses(
        self, sets: Sequence[PredictionSet], num_boxes: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Weighted losses of every prediction set of one step, each summed per stage, with the
        sets that need matching matched together (one device-to-host copy for all of them).

        Args:
            sets: the step's prediction sets.
            num_boxes: the step's :meth:`num_boxes`; None takes it from the first set's targets.

        Returns:
            ``{set.key(name, stage): scalar}`` for every set, loss term and stage present in the
            set's ``group_stage``, in that order.
        """
        if not sets:
            raise ValueError("set_losses needs at least one prediction set")
        stages = [self._check(s) for s in sets]
        unmatched = [s for s in sets if s.pairs is None]
        matched = iter(
            self.matcher.match([(s.logits, s.boxes, s.targets) for s in unmatched])
            if unmatched
            else []
        )
        if num_boxes is None:
            num_boxes = self.num_boxes(sets[0].targets)
        losses: dict[str, Tensor] = {}
        for prediction_set, set_stages in zip(sets, stages, strict=True):
            pairs = next(matched) if prediction_set.pairs is None else prediction_set.pairs
            for key, value in self._losses(prediction_set, set_stages, pairs, num_boxes).items():
                if key in losses:
                    raise ValueError(
                        f"two prediction sets give the loss {key!r}: give them distinct suffixes"
                    )
                losses[key] = value
        return losses

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

    def _losses(
        self,
        prediction_set: PredictionSet,
        stages: list[int],
        pairs: MatchedPairs,
        num_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """The weighted losses of one set, summed per stage, keyed by :meth:`PredictionSet.key`."""
        logits, boxes = prediction_set.logits, prediction_set.boxes
        labels, target_boxes, _, _ = pad_targets(prediction_set.targets, logits.device)
        num_boxes = num_boxes * prediction_set.num_boxes_factor
        # Loss math in at least float32: half-precision sums over G * B * Q * K terms lose too
        # much, and the GIoU upcasts anyway. Gradients flow back through the casts.
        dtype = torch.promote_types(torch.promote_types(logits.dtype, boxes.dtype), torch.float32)
        inputs = MatchedInputs(logits.to(dtype), boxes.to(dtype), labels, target_boxes, pairs)
        names = list(self.terms)
        per_group = torch.stack([self.terms[name](inputs) for name in names], dim=1)  # [G, T]
        weights = constant_tensor(per_group, [self.weight_dict[k] for k in names])
        per_group = per_group * (weights / num_boxes)

        # Sum each stage's groups with index_add (not a membership matmul, which would let a
        # NaN in one stage leak into all of them): [S_present, T].
        present = sorted(set(stages))
        position = {stage: i for i, stage in enumerate(present)}
        stage_pos = constant_tensor(per_group, [position[s] for s in stages], dtype=torch.int64)
        per_stage = per_group.new_zeros(len(present), len(names)).index_add(0, stage_pos, per_group)
        return {
            prediction_set.key(name, stage): per_stage[i, j]
            for i, stage in enumerate(present)
            for j, name in enumerate(names)
        }

    def _check(self, prediction_set: PredictionSet) -> list[int]:
        """Raise ValueError on inconsistent inputs; the stages of the groups as ints."""
        logits = prediction_set.logits
        check_predictions(logits, prediction_set.boxes, prediction_set.targets)
        num_groups = logits.shape[0]
        stages = [int(s) for s in prediction_set.group_stage]
        if len(stages) != num_groups:
            raise ValueError(
                f"group_stage has {len(stages)} entries but the predictions have "
                f"{num_groups} query groups"
            )
        if any(s < 0 for s in stages):
            raise ValueError(f"group_stage entries must be non-negative, got {stages}")
        if "{stage}" not in prediction_set.suffix and len(set(stages)) > 1:
            raise ValueError(
                f"suffix {prediction_set.suffix!r} has no {{stage}} but the set's groups are of "
                f"stages {sorted(set(stages))}"
            )
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits has {logits.shape[-1]} classes, expected num_classes="
                f"{self.num_classes}"
            )
        return stages
