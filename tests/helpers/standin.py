"""A tiny detector that follows the model contract, for testing the engine (not a product).

It predicts a fixed set of boxes per image from a masked global average of a small conv net, so
its outputs do not depend on how much padding a batch adds; its loss is normalised by the number
of boxes across ranks, so a DDP run equals a single-process run with the same total batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sqr.data import batch_images
from sqr.utils import comm


class StandInDetector(nn.Module):
    def __init__(
        self, num_classes: int, num_queries: int = 4, hidden_dim: int = 16, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.conv1 = nn.Conv2d(3, hidden_dim, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, hidden_dim, 3, stride=2, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_dim, num_queries * (4 + num_classes))
        self.register_buffer(
            "pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1), persistent=False
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict]):
        images = [
            (x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        features, _ = batch_images(images)
        sizes = [tuple(image.shape[-2:]) for image in images]
        for conv in (self.conv1, self.conv2):
            # Zero everything outside each image after every layer, so that the next layer sees
            # the same zeros as its own padding would give: outputs then do not depend on how
            # much batch padding the other images in the batch caused.
            features = F.relu(conv(features))
            sizes = [((h + 1) // 2, (w + 1) // 2) for h, w in sizes]  # stride 2, padding 1
            valid = torch.zeros_like(features[:, :1])
            for i, (h, w) in enumerate(sizes):
                valid[i, :, :h, :w] = 1
            features = features * valid
        pooled = features.sum((2, 3)) / valid.sum((2, 3))
        out = self.head(self.dropout(pooled)).view(len(images), self.num_queries, -1)
        boxes, logits = out[..., :4].sigmoid(), out[..., 4:]  # boxes: normalised cx, cy, w, h
        if self.training:
            return self.losses(batched_inputs, boxes, logits)
        return self.inference(batched_inputs, boxes, logits)

    def losses(self, batched_inputs, boxes, logits) -> dict[str, torch.Tensor]:
        if any("targets" not in x for x in batched_inputs):
            raise ValueError("StandInDetector: training needs 'targets' in every input")
        num_boxes = torch.tensor(
            float(sum(len(x["targets"]["boxes"]) for x in batched_inputs)), device=self.device
        )
        # DDP averages gradients over ranks, so each rank divides by the mean count per rank.
        num_boxes = (comm.all_reduce_sum(num_boxes) / comm.get_world_size()).clamp(min=1)
        loss_box = boxes.sum() * 0.0
        target_classes = torch.zeros_like(logits)
        for i, x in enumerate(batched_inputs):
            gt = x["targets"]["boxes"].to(self.device)[: self.num_queries]
            h, w = x["image"].shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            cxcywh = torch.cat([(gt[:, :2] + gt[:, 2:]) / 2, gt[:, 2:] - gt[:, :2]], 1) / scale
            loss_box = loss_box + F.l1_loss(boxes[i, : len(gt)], cxcywh, reduction="sum")
            labels = x["targets"]["labels"][: self.num_queries].to(self.device)
            target_classes[i, torch.arange(len(labels)), labels] = 1.0
        loss_cls = F.binary_cross_entropy_with_logits(logits, target_classes, reduction="sum")
        return {"loss_cls": loss_cls / num_boxes, "loss_box": 5.0 * loss_box / num_boxes}

    def inference(self, batched_inputs, boxes, logits) -> list[dict]:
        results = []
        for x, b, lg in zip(batched_inputs, boxes, logits, strict=True):
            h, w = x["height"], x["width"]
            scores, labels = lg.sigmoid().max(-1)
            xyxy = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)
            results.append(
                {
                    "boxes": xyxy * torch.tensor([w, h, w, h], device=self.device),
                    "scores": scores,
                    "labels": labels,
                }
            )
        return results
