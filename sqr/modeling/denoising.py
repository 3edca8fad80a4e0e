"""DINO's contrastive denoising (CDN): noised ground truth as extra decoder queries, the
attention mask that keeps them apart, and their losses against fixed targets.

Follows detrex's DINO (``projects/dino/modeling/dino.py`` ``prepare_for_cdn`` and
``dn_criterion.py`` at e244e6c), rewritten from tensors rather than index loops:

* ``num_groups = max(num_denoising // max_gt, 1)`` groups of ``2 * max_gt`` queries per image
  (``max_gt``: most targets in an image of the batch). A group holds a *positive* copy of every
  target of the image (``max_gt`` slots, the first ``N_b`` filled) and a *negative* copy (the
  next ``max_gt``); unfilled slots keep zero content and a zero-logit box.
* Label noise: each copy's label is replaced by a uniformly drawn class with probability
  ``label_noise_ratio / 2``. Box noise: each corner moves by ``u * (w/2, h/2) * box_noise_scale``
  with a random sign, ``u ~ U[0, 1)`` for positives and ``U[1, 2)`` for negatives, then the box is
  clamped to the image. The random numbers are drawn from torch's global generator in detrex's
  order and shapes, so one seed gives detrex's noise.
* The content is the embedding of the noised label (``label_enc``); the box enters as
  ``sigmoid(logit(box))`` with the logit clamped at ``inverse_sigmoid_eps``, as detrex's round
  trip through ``inverse_sigmoid`` does.
* Attention mask over ``[denoising ; matching]``: the matching queries never see a denoising
  query (so they decode as without denoising), and each denoising group sees only itself and
  the matching queries.
* Losses: every positive copy is assigned its own target (no matching); negatives and padding
  slots are background for the focal loss. The losses are divided by ``num_boxes * num_groups``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sqr.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid
from sqr.modeling.criterion import PredictionSet, SetCriterion
from sqr.modeling.set_prediction import MatchedPairs


@dataclass(frozen=True)
class DenoisingQueries:
    """One batch's denoising queries, placed before the matching queries.

    Attributes:
        content: Tensor[B, P, C], embeddings of the noised labels (zero in unfilled slots).
        boxes: Tensor[B, P, 4], noised boxes, normalised cxcywh.
        attn_mask: Bool[P + Q, P + Q], True where query i may not attend to query j.
        num_groups: groups of positive and negative copies; P = num_groups * group_size.
        group_size: queries per group, twice the most targets in an image.
        num_targets: targets of each image.
    """

    content: Tensor
    boxes: Tensor
    attn_mask: Tensor
    num_groups: int
    group_size: int
    num_targets: tuple[int, ...]

    def indices(self) -> list[tuple[Tensor, Tensor]]:
        """Per image ``(query_idx, target_idx)`` on the queries' device: each group's positive
        copy of target t sits at query ``group * group_size + t``."""
        device = self.content.device
        result = []
        for count in self.num_targets:
            target = torch.arange(count, device=device).repeat(self.num_groups)
            start = torch.arange(self.num_groups, device=device).repeat_interleave(count)
            result.append((start * self.group_size + target, target))
        return result

    def pairs(self, num_decoded_groups: int) -> MatchedPairs:
        """:meth:`indices` of every image for each of ``num_decoded_groups`` decoded groups,
        built on the device (no host-device copy)."""
        device = self.content.device
        per_image = self.indices()
        query = torch.cat([q for q, _ in per_image])
        target = torch.cat([t for _, t in per_image])
        image = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(per_image)])
        group = torch.arange(num_decoded_groups, device=device).repeat_interleave(len(query))
        repeat = num_decoded_groups
        return MatchedPairs(
            group, image.repeat(repeat), query.repeat(repeat), target.repeat(repeat)
        )

    def prediction_set(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: list[dict[str, Tensor]],
        group_stage: Sequence[int],
    ) -> PredictionSet:
        """The decoded denoising queries as the criterion takes them: every positive copy
        assigned its own target (:meth:`pairs`), losses divided by ``num_boxes * num_groups``,
        keys ``{name}_dn_s{stage}``.

        Args:
            logits: Tensor[G_dn, B, P, K] of every decoded group that carries these queries.
            boxes: Tensor[G_dn, B, P, 4] normalised cxcywh.
            targets: per image {"labels", "boxes"}, the targets these queries were built from.
            group_stage: the stage of each of those groups.
        """
        return PredictionSet(
            logits,
            boxes,
            targets,
            group_stage,
            suffix="_dn_s{stage}",
            pairs=self.pairs(logits.shape[0]),
            num_boxes_factor=self.num_groups,
        )


def denoising_attn_mask(
    num_groups: int, group_size: int, num_queries: int, device: torch.device | None = None
) -> Tensor:
    """Self-attention mask of ``num_groups`` denoising groups followed by the matching queries.

    Args:
        num_groups: denoising groups.
        group_size: queries per denoising group.
        num_queries: matching queries.
        device: where to build it (default: the CPU).

    Returns:
        Bool[P + Q, P + Q] with P = num_groups * group_size; True where query i (row) may not
        attend to query j: j is a denoising query of another group (the matching queries count
        as a group of their own).
    """
    denoising = num_groups * group_size
    index = torch.arange(denoising + num_queries, device=device)
    group = (index // group_size).clamp(max=num_groups)  # the matching queries: num_groups
    return (group[:, None] != group[None, :]) & (index[None, :] < denoising)


class ContrastiveDenoising(nn.Module):
    """Builds the denoising queries of a training batch (see the module docstring).

    Args:
        num_classes: object classes.
        embed_dim: query channels.
        num_denoising: denoising queries aimed at per copy kind (detrex's ``dn_number``): the
            groups are ``num_denoising // max_gt`` (at least 1); 0 turns denoising off.
        label_noise_ratio: twice the probability that a copy's label is redrawn.
        box_noise_scale: box noise in units of half the box size.
        inverse_sigmoid_eps: clamp of the boxes' logit round trip (detrex: 1e-3).
        sync_free_label_noise: draw a new label for every copy and keep it where the copy is
            redrawn. detrex (the default, False) draws labels for the redrawn copies only, which
            needs their count on the host: one synchronisation per step on CUDA. Same
            distribution; other random numbers from there on (box noise included).
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        inverse_sigmoid_eps: float = 1e-3,
        sync_free_label_noise: bool = False,
    ) -> None:
        super().__init__()
        if num_denoising < 0:
            raise ValueError(f"num_denoising must be >= 0, got {num_denoising}")
        if not 0 <= label_noise_ratio <= 1 or box_noise_scale < 0:
            raise ValueError(
                f"label_noise_ratio must be in [0, 1] and box_noise_scale >= 0, got "
                f"{label_noise_ratio}, {box_noise_scale}"
            )
        self.label_enc = nn.Embedding(num_classes, embed_dim)
        self.num_classes = num_classes
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.eps = inverse_sigmoid_eps
        self.sync_free_label_noise = sync_free_label_noise

    def forward(
        self, targets: Sequence[dict[str, Tensor]], num_queries: int
    ) -> DenoisingQueries | None:
        """
        Args:
            targets: per image {"labels" [N_b], "boxes" [N_b, 4] normalised cxcywh}.
            num_queries: matching queries that follow the denoising ones.

        Returns:
            The denoising queries, or None when denoising is off or no image has a target.
        """
        counts = tuple(int(t["labels"].shape[0]) for t in targets)
        max_gt = max(counts, default=0)
        if self.num_denoising == 0 or max_gt == 0:
            return None
        num_groups = max(self.num_denoising // max_gt, 1)
        copies = 2 * num_groups  # positive and negative copy of every group
        labels = torch.cat([t["labels"] for t in targets]).repeat(copies)
        boxes = torch.cat([t["boxes"] for t in targets]).repeat(copies, 1)
        total = sum(counts)
        if self.label_noise_ratio > 0:
            redrawn = torch.rand_like(labels.float()) < self.label_noise_ratio * 0.5
            if self.sync_free_label_noise:
                new_labels = torch.randint_like(labels, 0, self.num_classes)
                labels = torch.where(redrawn, new_labels, labels)
            else:
                redraw = torch.nonzero(redrawn).view(-1)  # the host reads how many
                new_labels = torch.randint_like(redraw, 0, self.num_classes)
                labels = labels.scatter(0, redraw, new_labels)
        if self.box_noise_scale > 0:
            corners = box_cxcywh_to_xyxy(boxes)
            half_size = (boxes[:, 2:] / 2).repeat(1, 2)
            sign = torch.randint_like(boxes, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
            part = torch.rand_like(boxes)
            # Copies are blocks of all `total` targets: even blocks positive, odd negative.
            negative = (torch.arange(len(boxes), device=boxes.device) // total) % 2 == 1
            part = (part + negative[:, None].float()) * sign
            corners = (corners + part * half_size * self.box_noise_scale).clamp(min=0.0, max=1.0)
            boxes = box_xyxy_to_cxcywh(corners)

        # Copy of target t of image b, block j, goes to slot max_gt * j + t of image b.
        device = boxes.device
        image = torch.cat(
            [torch.full((n,), b, dtype=torch.int64, device=device) for b, n in enumerate(counts)]
        )
        within = torch.cat([torch.arange(n, device=device) for n in counts])
        block = torch.arange(copies, device=device).repeat_interleave(total)
        slot = within.repeat(copies) + max_gt * block
        image = image.repeat(copies)
        size = copies * max_gt
        content = boxes.new_zeros(len(targets), size, self.label_enc.embedding_dim)
        logits = boxes.new_zeros(len(targets), size, 4)
        content = content.index_put((image, slot), self.label_enc(labels))
        logits = logits.index_put((image, slot), inverse_sigmoid(boxes, self.eps))
        mask = denoising_attn_mask(num_groups, 2 * max_gt, num_queries, device)
        return DenoisingQueries(content, logits.sigmoid(), mask, num_groups, 2 * max_gt, counts)


def denoising_losses(
    criterion: SetCriterion,
    logits: Tensor,
    boxes: Tensor,
    targets: list[dict[str, Tensor]],
    group_stage: Sequence[int],
    queries: DenoisingQueries,
    num_boxes: Tensor | None = None,
) -> dict[str, Tensor]:
    """The criterion's losses of the denoising queries alone (a detector passes
    :meth:`DenoisingQueries.prediction_set` with its other sets to one
    :meth:`SetCriterion.set_losses` call).

    Args:
        criterion: the detector's set criterion (its weights and loss terms).
        logits, boxes, targets, group_stage: as in :meth:`DenoisingQueries.prediction_set`.
        queries: the denoising queries decoded.
        num_boxes: the step's :meth:`SetCriterion.num_boxes` (None: taken here).

    Returns:
        ``{name}_dn_s{stage}`` for each loss term, summed over the stage's groups.
    """
    return criterion.set_losses(
        [queries.prediction_set(logits, boxes, targets, group_stage)], num_boxes
    )
