"""The detector contract shared by every query-based detector of this package.

In the spirit of detectron2's ``DenseDetector`` (``modeling/meta_arch/dense_detector.py``): the
base class owns what the detectors have in common (the train/eval dispatch, image normalisation
and batching, the eval padding and box policy, target normalisation, top-k inference, the
recollection schedules built from the decoder's depth) and a subclass writes only
:meth:`QueryDetector.predict_batch`, overriding a hook where its reference differs. See
``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import torch
from torch import nn

from sqr.data.batching import batch_images
from sqr.layers.box_ops import box_cxcywh_to_absolute_xyxy, box_xyxy_to_cxcywh, refine_boxes
from sqr.layers.constants import constant_tensor
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders.base import RecollectingDecoder
from sqr.modeling.sqr import Recollection, RecollectionSchedule
from sqr.utils.checks import check_positive


class QueryDetector(nn.Module):
    """A set-prediction detector whose decoder follows a recollection schedule when training.

    The contract (what ``tools/train_net.py``, :mod:`sqr.evaluation.stages` and
    ``tools/benchmark.py`` rely on):

    * ``forward(batched_inputs)``: in training the weighted losses of :meth:`losses`, in
      evaluation the outputs of :meth:`inference` on the last stage. The mode comes from
      ``self.training`` only; training without ``"targets"`` in every input raises ValueError.
    * :meth:`predict`: logits ``[G, B, Q, K]`` and boxes ``[G, B, Q, 4]`` (normalised cxcywh) of
      every decoded group, with the schedule that produced them: ``self.recollection`` in
      training, the plain one in evaluation (one group per stage, the last the final output).
      It is :meth:`preprocess_image` then :meth:`predict_images` (the eval padding policy, then
      :meth:`predict_batch`, which a subclass writes), on tensors only: what :mod:`sqr.export`
      traces.
    * :meth:`inference`: one stage's predictions as eval outputs; its batched tensor part is
      :meth:`postprocess`.
    * ``self.recollection``, the training schedule (built from the decoder's depth), and
      ``self.decoder``, a :class:`~sqr.modeling.decoders.base.RecollectingDecoder` (the module
      benchmarks time, with its ``checkpoint_recollected`` flag). Subclasses register the
      decoder themselves (its place among their submodules fixes the parameter order).

    A subclass may override :meth:`losses`, for loss terms beyond the decoded groups' (encoder
    proposals, denoising queries).

    Args:
        decoder: the decoder; the schedules have its number of stages.
        criterion: the set criterion (matching and losses).
        recollection: how training recollects; evaluation always runs the plain decoder.
        num_classes: object classes.
        num_queries: matching queries per image.
        pixel_mean, pixel_std: RGB normalisation (0-255 scale).
        select_box_nums_for_evaluation: detections kept per image (top-k over Q x K scores).
        size_divisibility: the padded batch is a multiple of it (:meth:`preprocess_image`).
        mask_padding_in_eval: give the model the padding mask in evaluation too; False gives it
            an all-zero mask there, as detrex evaluates (training always masks the padding).
        clip_boxes: clip the eval boxes to the image.
        drop_empty_boxes: then drop the boxes that clipping emptied, as detectron2's
            ``detector_postprocess`` does.
    """

    def __init__(
        self,
        *,
        decoder: RecollectingDecoder,
        criterion: SetCriterion,
        recollection: Recollection,
        num_classes: int,
        num_queries: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        select_box_nums_for_evaluation: int,
        size_divisibility: int = 1,
        mask_padding_in_eval: bool = True,
        clip_boxes: bool = True,
        drop_empty_boxes: bool = False,
    ) -> None:
        super().__init__()
        check_positive(
            num_classes=num_classes,
            num_queries=num_queries,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            size_divisibility=size_divisibility,
        )
        self.criterion = criterion
        self.recollection = recollection.schedule(decoder.num_stages)
        self.plain_schedule = RecollectionSchedule(decoder.num_stages, mode="none")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.size_divisibility = size_divisibility
        self.mask_padding_in_eval = mask_padding_in_eval
        self.clip_boxes = clip_boxes
        self.drop_empty_boxes = drop_empty_boxes
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def active_schedule(self) -> RecollectionSchedule:
        """The schedule the decoder follows now: the recollection one only in training."""
        return self.recollection if self.training else self.plain_schedule

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        """
        Args:
            batched_inputs: one dict per image: "image" uint8 [3, H, W], "height", "width",
                and in training "targets" ({"boxes": [N, 4] absolute xyxy, "labels": [N]}).

        Returns:
            Training: weighted losses per stage (``loss_class_s0`` ... ``loss_giou_s5``).
            Evaluation: per image {"boxes" [k, 4] xyxy in height x width, "scores", "labels"}.
        """
        if not self.training:
            logits, boxes, _ = self.predict(batched_inputs)
            return self.inference(logits[-1], boxes[-1], batched_inputs)
        if any("targets" not in x for x in batched_inputs):
            raise ValueError(
                f"{type(self).__name__} in training mode needs 'targets' in every input dict"
            )
        return self.losses(batched_inputs, [self._normalised_targets(x) for x in batched_inputs])

    def predict(
        self, batched_inputs: list[dict]
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """Class logits [G, B, Q, K] and boxes [G, B, Q, 4] (normalised cxcywh) of every
        decoded group, with the schedule that produced them (plain in evaluation: one group
        per stage, the last being the final prediction)."""
        return self.predict_images(*self.preprocess_image(batched_inputs))

    def predict_images(
        self, images: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """:meth:`predict` from the batch that :meth:`preprocess_image` makes: the eval padding
        policy (``mask_padding_in_eval``), then :meth:`predict_batch`.

        Args:
            images: normalised Tensor[B, 3, Hp, Wp], Hp and Wp multiples of
                ``size_divisibility``.
            padding: Bool[B, Hp, Wp], True on padding (each image fills its top-left corner).
        """
        return self.predict_batch(images, self.policy_padding(padding))

    def predict_batch(
        self, images: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """What a detector writes: :meth:`predict_images` with the padding mask the model sees.

        Args:
            images: as in :meth:`predict_images`.
            padding: Bool[B, Hp, Wp], True on padding; all False in evaluation without
                ``mask_padding_in_eval``.
        """
        raise NotImplementedError

    def policy_padding(self, padding: torch.Tensor) -> torch.Tensor:
        """The padding mask the model sees: as given, but all False in evaluation without
        ``mask_padding_in_eval``."""
        if self.training or self.mask_padding_in_eval:
            return padding
        return torch.zeros_like(padding)

    @staticmethod
    def check_level_counts(**modules: nn.Module) -> None:
        """ValueError unless every module (neck, encoder, decoder) has the same ``num_levels``."""
        levels = {name: module.num_levels for name, module in modules.items()}
        if len(set(levels.values())) != 1:
            raise ValueError(f"feature level counts disagree: {levels}")

    def losses(
        self, batched_inputs: list[dict], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of every decoded group (training only).

        Args:
            batched_inputs: the model inputs.
            targets: per image {"labels" [N], "boxes" [N, 4] normalised cxcywh}.
        """
        logits, boxes, schedule = self.predict(batched_inputs)
        num_boxes = self.criterion.num_boxes(targets)  # the step's one collective
        return self.criterion(logits, boxes, targets, schedule.group_stage, num_boxes)

    def preprocess_image(self, batched_inputs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images padded into one batch: Tensor[B, 3, Hp, Wp] and the padding mask
        Bool[B, Hp, Wp] (True on padding); Hp, Wp are multiples of ``size_divisibility``."""
        images = [
            # Pinned batches (the train loader's) copy to the GPU without blocking the host.
            (x["image"].to(self.device, non_blocking=True).float() - self.pixel_mean)
            / self.pixel_std
            for x in batched_inputs
        ]
        return batch_images(images, self.size_divisibility)

    def _normalised_targets(self, x: dict) -> dict[str, torch.Tensor]:
        """One input's targets as the criterion takes them: boxes normalised cxcywh in the
        image's own (unpadded) size."""
        height, width = x["image"].shape[-2:]
        scale = constant_tensor(self.pixel_mean, [width, height, width, height])
        boxes = x["targets"]["boxes"].to(self.device, non_blocking=True).float() / scale
        return {
            "labels": x["targets"]["labels"].to(self.device, non_blocking=True),
            "boxes": box_xyxy_to_cxcywh(boxes),
        }

    def inference(
        self, logits: torch.Tensor, boxes: torch.Tensor, batched_inputs: list[dict]
    ) -> list[dict]:
        """:meth:`postprocess` in each input's output size, without the boxes it does not keep.

        Args:
            logits: Tensor[B, Q, K]; boxes: Tensor[B, Q, 4] normalised cxcywh.

        Returns:
            Per image {"boxes" [k, 4] xyxy in height x width, "scores" [k], "labels" [k]}.
        """
        sizes = torch.tensor(
            [
                (x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1]))
                for x in batched_inputs
            ],
            device=boxes.device,
        )
        results = []
        for xyxy, score, label, keep in zip(*self.postprocess(logits, boxes, sizes), strict=True):
            results.append({"boxes": xyxy[keep], "scores": score[keep], "labels": label[keep]})
        return results

    def postprocess(
        self, logits: torch.Tensor, boxes: torch.Tensor, output_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k over the flattened [Q x K] sigmoid scores (one query may appear with several
        labels), boxes in each output size (clipped as ``clip_boxes`` says).

        Args:
            logits: Tensor[B, Q, K]; boxes: Tensor[B, Q, 4] normalised cxcywh.
            output_sizes: Tensor[B, 2], (height, width) of each image's output.

        Returns:
            ``(boxes, scores, labels, keep)``: boxes Tensor[B, k, 4] xyxy in output pixels,
            scores [B, k], labels int64 [B, k], and keep Bool[B, k]: False on the boxes that
            clipping emptied when ``drop_empty_boxes``, else all True.
        """
        scores = logits.sigmoid().flatten(1)
        scores, index = scores.topk(min(self.select_box_nums_for_evaluation, scores.shape[1]), 1)
        labels = index % self.num_classes
        chosen = torch.gather(boxes, 1, (index // self.num_classes).unsqueeze(-1).expand(-1, -1, 4))
        height, width = output_sizes[:, None].unbind(-1)  # [B, 1] each: one size per image
        xyxy = box_cxcywh_to_absolute_xyxy(chosen, height, width, clip=self.clip_boxes)
        if self.drop_empty_boxes:
            keep = (xyxy[..., 2] > xyxy[..., 0]) & (xyxy[..., 3] > xyxy[..., 1])
        else:
            keep = torch.ones_like(scores, dtype=torch.bool)
        return xyxy, scores, labels, keep


def stage_heads(
    class_heads: Sequence[nn.Module],
    box_heads: Sequence[nn.Module],
    hidden: torch.Tensor,
    references: torch.Tensor,
    group_stage: Sequence[int],
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [G, B, N, K] and boxes [G, B, N, 4] of groups hidden [G, B, N, C] with
    references [G, B, N, 4] (sigmoid space): each group goes through the heads of its stage,
    the box head's delta refining the reference (:func:`~sqr.layers.box_ops.refine_boxes`)."""
    logits, boxes, start = [], [], 0
    for stage, run in groupby(group_stage):
        part = slice(start, start + len(list(run)))
        start = part.stop
        logits.append(class_heads[stage](hidden[part]))
        delta = box_heads[stage](hidden[part])
        boxes.append(refine_boxes(delta, references[part], eps))
    return torch.cat(logits), torch.cat(boxes)
