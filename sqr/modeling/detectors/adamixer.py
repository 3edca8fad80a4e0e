"""AdaMixer (Gao et al., CVPR 2022) with Selective Query Recollection in training.

Reproduces the SQR fork of MMDetection (``QueryBased`` + ``InitialQueryGenerator`` +
``AdaMixerDecoder``, b576a6e): ResNet C2-C5, :class:`~sqr.modeling.neck.ChannelMapping`, queries
that start as whole-image boxes, and a decoder of stages with unshared parameters. Images are
padded to a multiple of 32 and boxes live in pixels of the padded canvas; predictions and
targets are normalised by each image's own (unpadded) size, as mmdet's ``img_shape`` does.

Unlike the reference's batched SQR variant, any batch size works, and groups share the
unrepeated feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sqr.data.batching import batch_images
from sqr.layers.adamixer_ops import xyxy_to_xyzr
from sqr.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.recollection import RecollectionSchedule

from .adamixer_decoder import AdaMixerDecoder


class InitialQueryGenerator(nn.Module):
    """AdaMixer's initial queries: learnt content, boxes covering the whole image.

    The content embedding goes through a LayerNorm without affine parameters. The boxes are
    fixed: the reference stores them as an embedding but detaches it, so it never trains.

    Args:
        num_queries: queries per image.
        embed_dim: content channels.
    """

    def __init__(self, num_queries: int = 100, embed_dim: int = 256) -> None:
        super().__init__()
        self.content = nn.Embedding(num_queries, embed_dim)

    def forward(self, image_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_sizes: Tensor[B, 2] (height, width) of each image before padding.

        Returns:
            content Tensor[B, Q, C] and xyzr Tensor[B, Q, 4] (the whole image, in pixels).
        """
        num_queries, channels = self.content.weight.shape
        content = F.layer_norm(self.content.weight, (channels,))
        whole = torch.cat([torch.zeros_like(image_sizes), image_sizes.flip(-1)], dim=-1)
        xyzr = xyxy_to_xyzr(whole.to(content.dtype))[:, None].expand(-1, num_queries, -1)
        return content.expand(len(image_sizes), -1, -1), xyzr


class AdaMixer(nn.Module):
    """AdaMixer whose decoder follows a recollection schedule when training.

    Args:
        backbone: returns a dict of feature maps.
        neck: maps that dict to a list of L maps, fine to coarse.
        decoder: the AdaMixer decoder.
        criterion: the set criterion (AdaMixer: focal 2, L1 5 on normalised xyxy, GIoU 2).
        recollection: the training schedule; evaluation always runs the plain decoder.
        num_classes: object classes.
        num_queries: queries per image.
        embed_dim: query channels.
        pixel_mean, pixel_std: RGB normalisation (0-255 scale).
        size_divisibility: the padded batch is a multiple of this (mmdet's ``Pad(32)``).
        select_box_nums_for_evaluation: detections kept per image (top-k over Q x K scores).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        decoder: AdaMixerDecoder,
        criterion: SetCriterion,
        recollection: RecollectionSchedule,
        num_classes: int = 80,
        num_queries: int = 100,
        embed_dim: int = 256,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisibility: int = 32,
        select_box_nums_for_evaluation: int = 100,
    ) -> None:
        super().__init__()
        if recollection.num_stages != decoder.num_stages:
            raise ValueError(
                f"recollection schedule has {recollection.num_stages} stages but the decoder has "
                f"{decoder.num_stages} stages"
            )
        self.backbone = backbone
        self.neck = neck
        self.query_generator = InitialQueryGenerator(num_queries, embed_dim)
        self.decoder = decoder
        self.criterion = criterion
        self.recollection = recollection
        self.plain_schedule = RecollectionSchedule(decoder.num_stages, mode="none")
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        """
        Args:
            batched_inputs: one dict per image: "image" uint8 [3, H, W], "height", "width",
                and in training "targets" ({"boxes": [N, 4] absolute xyxy, "labels": [N]}).

        Returns:
            Training: weighted losses per stage (``loss_class_s0`` ... ``loss_giou_s5``).
            Evaluation: per image {"boxes" [k, 4] xyxy in height x width, "scores", "labels"}.
        """
        if self.training and any("targets" not in x for x in batched_inputs):
            raise ValueError("AdaMixer in training mode needs 'targets' in every input dict")
        logits, boxes, schedule = self.predict(batched_inputs)
        if self.training:
            targets = [self._normalised_targets(x) for x in batched_inputs]
            return self.criterion(logits, boxes, targets, schedule.group_stage)
        return self.inference(logits[-1], boxes[-1], batched_inputs)

    def predict(
        self, batched_inputs: list[dict]
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """Class logits [G, B, Q, K] and boxes [G, B, Q, 4] (cxcywh normalised by each image's
        size) of every decoded group, with the schedule that produced them (plain in
        evaluation: one group per stage, the last being the final prediction)."""
        images = [
            (x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        tensor, _ = batch_images(images, self.size_divisibility)
        features = self.neck(self.backbone(tensor))
        sizes = torch.tensor([im.shape[-2:] for im in images], device=self.device)
        content, xyzr = self.query_generator(sizes)
        schedule = self.recollection if self.training else self.plain_schedule
        logits, boxes = self.decoder(content, xyzr, *features, schedule=schedule)
        whwh = sizes.flip(-1).repeat(1, 2).to(boxes.dtype)  # [B, 4]
        return logits, box_xyxy_to_cxcywh(boxes / whwh[:, None]), schedule

    def _normalised_targets(self, x: dict) -> dict[str, torch.Tensor]:
        height, width = x["image"].shape[-2:]
        scale = torch.tensor(
            [width, height, width, height], dtype=torch.float32, device=self.device
        )
        boxes = x["targets"]["boxes"].to(self.device).float() / scale
        return {
            "labels": x["targets"]["labels"].to(self.device),
            "boxes": box_xyxy_to_cxcywh(boxes),
        }

    def inference(
        self, logits: torch.Tensor, boxes: torch.Tensor, batched_inputs: list[dict]
    ) -> list[dict]:
        """Top-k over the flattened [Q x K] sigmoid scores, boxes in each output size.

        As in mmdet's AdaMixer, boxes are neither clipped to the image nor filtered.

        Args:
            logits: Tensor[B, Q, K]; boxes: Tensor[B, Q, 4] normalised cxcywh.
        """
        scores = logits.sigmoid().flatten(1)
        scores, index = scores.topk(min(self.select_box_nums_for_evaluation, scores.shape[1]), 1)
        labels = index % self.num_classes
        chosen = torch.gather(boxes, 1, (index // self.num_classes).unsqueeze(-1).expand(-1, -1, 4))
        results = []
        for x, score, label, box in zip(batched_inputs, scores, labels, chosen, strict=True):
            height = x.get("height", x["image"].shape[-2])
            width = x.get("width", x["image"].shape[-1])
            xyxy = box_cxcywh_to_xyxy(box) * box.new_tensor([width, height, width, height])
            results.append({"boxes": xyxy, "scores": score, "labels": label})
        return results
