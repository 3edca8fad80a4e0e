"""DAB-DETR (Liu et al., ICLR 2022) with Selective Query Recollection in training.

Reproduces detrex's DAB-DETR numerics (``projects/dab_detr/modeling/dab_detr.py`` at e244e6c),
quirks included: the padding mask reaches the encoder in training only (it is all zeros in
evaluation), the decoder never sees it, and inference takes the top-k over all query-class
scores, so one query may appear with several labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sqr.data.batching import batch_images
from sqr.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid
from sqr.layers.mlp import MLP
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.recollection import RecollectionSchedule

from .dab_transformer import DabDetrDecoder, DabDetrEncoder


class DABDETR(nn.Module):
    """Single-scale DAB-DETR whose decoder follows a recollection schedule when training.

    Args:
        backbone: returns a dict of feature maps; ``in_feature`` is used.
        in_feature: name of the feature map (detrex: "res5").
        in_channels: its channels.
        position_embedding: maps a padding mask [B, H, W] to [B, embed_dim, H, W].
        encoder: the transformer encoder.
        decoder: the transformer decoder.
        criterion: the set criterion (matching and losses).
        recollection: the training schedule; evaluation always runs the plain decoder.
        num_classes: object classes.
        num_queries: learnable anchor boxes.
        embed_dim: transformer channels.
        pixel_mean, pixel_std: RGB normalisation (0-255 scale).
        select_box_nums_for_evaluation: detections kept per image (top-k over Q x K scores).
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (detrex: 1e-3).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_feature: str = "res5",
        in_channels: int = 2048,
        position_embedding: nn.Module,
        encoder: DabDetrEncoder,
        decoder: DabDetrDecoder,
        criterion: SetCriterion,
        recollection: RecollectionSchedule,
        num_classes: int = 80,
        num_queries: int = 300,
        embed_dim: int = 256,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        select_box_nums_for_evaluation: int = 300,
        inverse_sigmoid_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if recollection.num_stages != decoder.num_layers:
            raise ValueError(
                f"recollection schedule has {recollection.num_stages} stages but the decoder has "
                f"{decoder.num_layers} layers"
            )
        self.backbone = backbone
        self.in_feature = in_feature
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.encoder = encoder
        self.decoder = decoder
        self.anchor_box_embed = nn.Embedding(num_queries, 4)
        self.class_embed = nn.Linear(embed_dim, num_classes)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        self.criterion = criterion
        self.recollection = recollection
        self.plain_schedule = RecollectionSchedule(decoder.num_layers, mode="none")
        self.num_classes = num_classes
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.eps = inverse_sigmoid_eps
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), False)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # detrex: xavier on every matrix of the transformer, anchor centres uniform in [0, 1]
        # (stored as logits; w, h keep N(0, 1)), class prior 0.01, zero last box layer.
        for module in (self.encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        with torch.no_grad():
            centres = torch.rand_like(self.anchor_box_embed.weight[:, :2])
            self.anchor_box_embed.weight[:, :2] = inverse_sigmoid(centres, self.eps)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

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
            raise ValueError("DABDETR in training mode needs 'targets' in every input dict")
        logits, boxes, schedule = self.predict(batched_inputs)
        if self.training:
            targets = [self._normalised_targets(x) for x in batched_inputs]
            return self.criterion(logits, boxes, targets, schedule.group_stage)
        return self.inference(logits[-1], boxes[-1], batched_inputs)

    def predict(
        self, batched_inputs: list[dict]
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """Class logits [G, B, Q, K] and boxes [G, B, Q, 4] (normalised cxcywh) of every
        decoded group, with the schedule that produced them (plain in evaluation: one group
        per stage, the last being the final prediction)."""
        images = [
            (x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        tensor, padding = batch_images(images)
        if not self.training:
            padding = torch.zeros_like(padding)  # detrex evaluates without a padding mask
        features = self.input_proj(self.backbone(tensor)[self.in_feature])
        padding = F.interpolate(padding[None].float(), size=features.shape[-2:])[0].bool()
        pos = self.position_embedding(padding).flatten(2).transpose(1, 2)
        memory = self.encoder(features.flatten(2).transpose(1, 2), pos, padding.flatten(1))
        schedule = self.recollection if self.training else self.plain_schedule
        hidden, references = self.decoder(
            memory, pos, self.anchor_box_embed.weight, self.bbox_embed, schedule
        )
        logits = self.class_embed(hidden)
        boxes = (self.bbox_embed(hidden) + inverse_sigmoid(references, self.eps)).sigmoid()
        return logits, boxes, schedule

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

        Args:
            logits: Tensor[B, Q, K]; boxes: Tensor[B, Q, 4] normalised cxcywh.
        """
        scores = logits.sigmoid().flatten(1)
        scores, index = scores.topk(min(self.select_box_nums_for_evaluation, scores.shape[1]), 1)
        labels = index % self.num_classes
        chosen = torch.gather(boxes, 1, (index // self.num_classes).unsqueeze(-1).expand(-1, -1, 4))
        results = []
        for x, score, label, box in zip(batched_inputs, scores, labels, chosen, strict=True):
            height, width = (
                x.get("height", x["image"].shape[-2]),
                x.get("width", x["image"].shape[-1]),
            )
            scale = box.new_tensor([width, height, width, height])
            xyxy = box_cxcywh_to_xyxy(box) * scale
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
            # detectron2's detector_postprocess drops boxes that clipping made empty.
            keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
            results.append({"boxes": xyxy[keep], "scores": score[keep], "labels": label[keep]})
        return results
