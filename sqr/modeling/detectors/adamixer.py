"""AdaMixer (Gao et al., CVPR 2022) with Selective Query Recollection in training.

Reproduces the SQR fork of MMDetection (``QueryBased`` + ``InitialQueryGenerator`` +
``AdaMixerDecoder``, b576a6e): ResNet C2-C5, :class:`~sqr.modeling.neck.ChannelMapper`, queries
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

from sqr.layers.adamixer_ops import xyxy_to_xyzr
from sqr.layers.box_ops import box_xyxy_to_cxcywh
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders.adamixer import AdaMixerDecoder
from sqr.modeling.sqr import Recollection, RecollectionSchedule

from .base import QueryDetector


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
        # shape[0], not len(): an ONNX trace records len() as a constant batch size.
        return content.expand(image_sizes.shape[0], -1, -1), xyzr


class AdaMixer(QueryDetector):
    """AdaMixer whose decoder follows a recollection schedule when training.

    Args:
        backbone: returns a dict of feature maps.
        neck: maps that dict to a list of L maps, fine to coarse.
        decoder: the AdaMixer decoder.
        criterion: the set criterion (AdaMixer: focal 2, L1 5 on normalised xyxy, GIoU 2).
        num_queries: queries per image.
        embed_dim: query channels.
        size_divisibility: the padded batch is a multiple of this (mmdet's ``Pad(32)``).
        clip_boxes: as in mmdet's AdaMixer, eval boxes are neither clipped to the image nor
            filtered by default.
        recollection, num_classes, pixel_mean, pixel_std, select_box_nums_for_evaluation: see
            :class:`QueryDetector`. The padding mask is always given: it tells each image's size.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        decoder: AdaMixerDecoder,
        criterion: SetCriterion,
        recollection: Recollection,
        num_classes: int = 80,
        num_queries: int = 100,
        embed_dim: int = 256,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisibility: int = 32,
        select_box_nums_for_evaluation: int = 100,
        clip_boxes: bool = False,
    ) -> None:
        super().__init__(
            decoder=decoder,
            criterion=criterion,
            recollection=recollection,
            num_classes=num_classes,
            num_queries=num_queries,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            size_divisibility=size_divisibility,
            clip_boxes=clip_boxes,
        )
        self.backbone = backbone
        self.neck = neck
        self.query_generator = InitialQueryGenerator(num_queries, embed_dim)
        self.decoder = decoder

    def predict_batch(
        self, tensor: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """See :meth:`QueryDetector.predict_batch`; the boxes are cxcywh normalised by each
        image's own size, read from the padding mask."""
        features = self.neck(self.backbone(tensor))
        # Each image fills the top-left corner: its first column and row count its height, width.
        sizes = torch.stack([(~padding[:, :, 0]).sum(1), (~padding[:, 0, :]).sum(1)], dim=-1)
        content, xyzr = self.query_generator(sizes)
        schedule = self.active_schedule
        logits, boxes = self.decoder(content, xyzr, *features, schedule=schedule)
        whwh = sizes.flip(-1).repeat(1, 2).to(boxes.dtype)  # [B, 4]
        return logits, box_xyxy_to_cxcywh(boxes / whwh[:, None]), schedule
