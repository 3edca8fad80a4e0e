"""DAB-DETR (Liu et al., ICLR 2022) with Selective Query Recollection in training.

Reproduces detrex's DAB-DETR numerics (``projects/dab_detr/modeling/dab_detr.py`` at e244e6c),
quirks included: the padding mask reaches the encoder in training only (it is all zeros in
evaluation), the decoder never sees it, and inference takes the top-k over all query-class
scores, so one query may appear with several labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sqr.layers.box_ops import inverse_sigmoid, refine_boxes
from sqr.layers.init import init_class_prior, init_zero_box_delta, xavier_init_matrices
from sqr.layers.mlp import MLP
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders.dab import DabDetrDecoder
from sqr.modeling.encoders.dab import DabDetrEncoder
from sqr.modeling.sqr import Recollection, RecollectionSchedule

from .base import QueryDetector


class DABDETR(QueryDetector):
    """Single-scale DAB-DETR whose decoder follows a recollection schedule when training.

    Args:
        backbone: returns a dict of feature maps; ``in_feature`` is used.
        in_feature: name of the feature map (detrex: "res5").
        in_channels: its channels.
        position_embedding: maps a padding mask [B, H, W] to [B, embed_dim, H, W].
        encoder: the transformer encoder.
        decoder: the transformer decoder.
        num_queries: learnable anchor boxes.
        embed_dim: transformer channels.
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (detrex: 1e-3).
        criterion, recollection, num_classes, pixel_mean, pixel_std,
        select_box_nums_for_evaluation, mask_padding_in_eval, drop_empty_boxes: see
            :class:`QueryDetector`. As detrex, evaluation runs without a padding mask and drops
            the boxes that clipping empties (detectron2's ``detector_postprocess``).
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
        recollection: Recollection,
        num_classes: int = 80,
        num_queries: int = 300,
        embed_dim: int = 256,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        select_box_nums_for_evaluation: int = 300,
        inverse_sigmoid_eps: float = 1e-3,
        mask_padding_in_eval: bool = False,
        drop_empty_boxes: bool = True,
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
            mask_padding_in_eval=mask_padding_in_eval,
            drop_empty_boxes=drop_empty_boxes,
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
        self.eps = inverse_sigmoid_eps
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # detrex: xavier on every matrix of the transformer, anchor centres uniform in [0, 1]
        # (stored as logits; w, h keep N(0, 1)), class prior 0.01, zero last box layer.
        xavier_init_matrices(self.encoder, self.decoder)
        with torch.no_grad():
            centres = torch.rand_like(self.anchor_box_embed.weight[:, :2])
            self.anchor_box_embed.weight[:, :2] = inverse_sigmoid(centres, self.eps)
        init_class_prior(self.class_embed)
        init_zero_box_delta(self.bbox_embed)

    def predict_batch(
        self, tensor: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """See :meth:`QueryDetector.predict_batch`."""
        features = self.input_proj(self.backbone(tensor)[self.in_feature])
        padding = F.interpolate(padding[None].float(), size=features.shape[-2:])[0].bool()
        pos = self.position_embedding(padding).flatten(2).transpose(1, 2)
        memory = self.encoder(features.flatten(2).transpose(1, 2), pos, padding.flatten(1))
        schedule = self.active_schedule
        hidden, references = self.decoder(
            memory, pos, self.anchor_box_embed.weight, self.bbox_embed, schedule
        )
        logits = self.class_embed(hidden)
        boxes = refine_boxes(self.bbox_embed(hidden), references, self.eps)
        return logits, boxes, schedule
