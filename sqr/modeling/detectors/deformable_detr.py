"""Deformable-DETR (Zhu et al., ICLR 2021) with Selective Query Recollection in training.

Reproduces the SQR recipe's mmdet 2.12 Deformable-DETR (``DeformableDETRHead`` and
``DeformableDetrTransformer`` of Fangyi-Chen/SQR at b576a6e): C3-C5 plus a stride-64 level, sine
positions with offset -0.5 plus level embeddings, 300 queries from ``Embedding(300, 512)``
split into position and content, 2-d reference points, shared heads, top-100 inference over
all query-class scores. The padding mask is used in training and evaluation alike (mmdet builds
it from ``img_shape`` in both), and inference keeps every top-k box (no empty-box filter).

Variants (typed flags): ``with_box_refine`` gives every decoder layer its own heads and refines
the references layer by layer; ``as_two_stage`` (which needs ``with_box_refine``, as in the
reference implementations) takes the initial boxes and queries from encoder proposals.

detrex's Deformable-DETR (``projects/deformable_detr/modeling/deformable_detr.py`` at e244e6c),
whose conversions of the original weights the model zoo lists, evaluates differently, and
those weights' AP was measured that way: ``mask_padding_in_eval=False`` gives its all-zero
padding mask in evaluation (``:165``; training masks the padding in both), and
``drop_empty_boxes=True`` the empty-box filter of detectron2's ``detector_postprocess``. Its
top-300 is ``select_box_nums_for_evaluation=300``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sqr.layers.box_ops import refine_boxes
from sqr.layers.init import init_class_prior, init_zero_box_delta, xavier_init_matrices
from sqr.layers.mlp import MLP
from sqr.layers.ms_deform_attn import MultiScaleDeformableAttention, set_backend
from sqr.modeling.criterion import PredictionSet, SetCriterion
from sqr.modeling.decoders.deformable import DeformableDetrDecoder
from sqr.modeling.encoders.deformable import DeformableDetrEncoder, flatten_levels
from sqr.modeling.neck import ChannelMapper
from sqr.modeling.query_selection import TwoStageProposals
from sqr.modeling.sqr import Recollection, RecollectionSchedule

from .base import QueryDetector


class DeformableDETR(QueryDetector):
    """Deformable-DETR whose decoder follows a recollection schedule when training.

    Args:
        backbone: returns a dict of feature maps containing ``in_features``.
        in_features: backbone levels fed to the neck, finest first (res3, res4, res5).
        neck: maps them to ``embed_dim`` channels and adds the extra levels.
        position_embedding: maps a padding mask [B, H, W] to [B, embed_dim, H, W].
        encoder: the deformable encoder.
        decoder: the deformable decoder.
        num_queries: decoder queries (two-stage: proposals kept).
        embed_dim: transformer channels.
        with_box_refine: per-layer heads and iterative reference refinement.
        as_two_stage: initial boxes and queries from encoder proposals (needs refinement).
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (mmdet: 1e-5).
        mask_padding_in_eval: give the encoder and decoder the padding mask in evaluation too
            (mmdet); False evaluates with an all-zero mask, as detrex does. Training always
            masks the padding.
        drop_empty_boxes: drop the eval boxes that clipping to the image empties (detrex, through
            detectron2's ``detector_postprocess``); mmdet keeps them.
        msda_backend: the sampling backend of every deformable-attention layer, ``"auto"``,
            ``"triton"`` or ``"pytorch"`` (:func:`~sqr.layers.ms_deform_attn.resolve_backend`);
            None keeps the layers' own (``$SQR_MSDA``, else ``"auto"``).
        criterion, recollection, num_classes, pixel_mean, pixel_std,
        select_box_nums_for_evaluation: see :class:`QueryDetector`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_features: Sequence[str] = ("res3", "res4", "res5"),
        neck: ChannelMapper,
        position_embedding: nn.Module,
        encoder: DeformableDetrEncoder,
        decoder: DeformableDetrDecoder,
        criterion: SetCriterion,
        recollection: Recollection,
        num_classes: int = 80,
        num_queries: int = 300,
        embed_dim: int = 256,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        select_box_nums_for_evaluation: int = 100,
        inverse_sigmoid_eps: float = 1e-5,
        mask_padding_in_eval: bool = True,
        drop_empty_boxes: bool = False,
        msda_backend: str | None = None,
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
        if as_two_stage and not with_box_refine:
            raise ValueError(
                "as_two_stage=True needs with_box_refine=True: the proposals use an extra "
                "per-layer head, as in the reference implementations"
            )
        self.check_level_counts(neck=neck, encoder=encoder, decoder=decoder)
        self.backbone = backbone
        self.in_features = tuple(in_features)
        self.neck = neck
        self.position_embedding = position_embedding
        self.level_embeds = nn.Parameter(torch.empty(neck.num_levels, embed_dim))
        self.encoder = encoder
        self.decoder = decoder
        if as_two_stage:
            self.proposals = TwoStageProposals(embed_dim)
        else:
            self.query_embedding = nn.Embedding(num_queries, 2 * embed_dim)
            self.reference_points = nn.Linear(embed_dim, 2)
        if with_box_refine:  # one head per layer, plus one for the proposals in two-stage
            num_heads = decoder.num_stages + int(as_two_stage)
            self.class_embed = nn.ModuleList(
                nn.Linear(embed_dim, num_classes) for _ in range(num_heads)
            )
            self.bbox_embed = nn.ModuleList(
                MLP(embed_dim, embed_dim, 4, 3) for _ in range(num_heads)
            )
        else:  # one head shared by every layer
            self.class_embed = nn.Linear(embed_dim, num_classes)
            self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        self.embed_dim = embed_dim
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.eps = inverse_sigmoid_eps
        self._reset_parameters()
        if msda_backend is not None:
            set_backend(self, msda_backend)

    def _reset_parameters(self) -> None:
        # mmdet: xavier on every matrix of the transformer, then MSDA's own init; reference
        # points xavier with zero bias; level embeddings N(0, 1); class prior 0.01; zero last
        # box layer, whose w, h bias starts at -2 in the first head (0 in two-stage).
        queries = self.proposals if self.as_two_stage else self.reference_points
        xavier_init_matrices(self.encoder, self.decoder, queries)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        if not self.as_two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embeds)
        class_heads = self.class_embed if self.with_box_refine else [self.class_embed]
        box_heads = self.bbox_embed if self.with_box_refine else [self.bbox_embed]
        init_class_prior(*class_heads)
        init_zero_box_delta(*box_heads)
        if not self.as_two_stage:
            nn.init.constant_(box_heads[0].layers[-1].bias[2:], -2.0)

    def losses(
        self, batched_inputs: list[dict], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Weighted losses per stage, plus ``{name}_enc`` of each of the criterion's terms for
        the two-stage proposals (:meth:`QueryDetector.losses`)."""
        logits, boxes, schedule, enc_outputs = self._decode(*self.preprocess_image(batched_inputs))
        num_boxes = self.criterion.num_boxes(targets)  # the step's one collective
        sets = [PredictionSet(logits, boxes, targets, schedule.group_stage)]
        if enc_outputs is not None:
            # Class-agnostic matching of every encoder token, solved with the decoder's.
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            enc_logits, enc_boxes = enc_outputs[0][None], enc_outputs[1][None]
            sets.append(PredictionSet(enc_logits, enc_boxes, binary, [0], suffix="_enc"))
        return self.criterion.set_losses(sets, num_boxes)

    def predict_batch(
        self, tensor: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """See :meth:`QueryDetector.predict_batch`."""
        logits, boxes, schedule, _ = self._decode(tensor, padding)
        return logits, boxes, schedule

    def _decode(
        self, tensor: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule, tuple | None]:
        """:meth:`predict_images`'s outputs plus, in two-stage, the encoder proposals' logits
        [B, S, K] and boxes [B, S, 4] (else None)."""
        features = self.backbone(tensor)
        levels = self.neck([features[name] for name in self.in_features])
        memory, pos, padding_mask, spatial_shapes, ratios = flatten_levels(
            levels, padding, self.position_embedding, self.level_embeds
        )
        memory = self.encoder(memory, pos, padding_mask, spatial_shapes, ratios)

        enc_outputs = None
        if self.as_two_stage:
            *enc_outputs, content, query_pos, reference = self.proposals(
                memory,
                padding_mask,
                spatial_shapes,
                self.class_embed[-1],
                self.bbox_embed[-1],
                self.num_queries,
            )
        else:
            query_pos, content = self.query_embedding.weight.split(self.embed_dim, dim=1)
            reference = self.reference_points(query_pos).sigmoid()
            query_pos, content, reference = (
                x.unsqueeze(0).expand(tensor.shape[0], -1, -1)
                for x in (query_pos, content, reference)
            )
        schedule = self.active_schedule
        hidden, references = self.decoder(
            content,
            query_pos,
            reference,
            memory,
            padding_mask,
            spatial_shapes,
            ratios,
            self.bbox_embed if self.with_box_refine else None,
            schedule,
        )
        logits, boxes = self._heads(hidden, references, schedule)
        return logits, boxes, schedule, enc_outputs

    def _heads(
        self, hidden: torch.Tensor, references: torch.Tensor, schedule: RecollectionSchedule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [G, B, Q, K] and boxes [G, B, Q, 4] from the decoder's groups; each group
        goes through the heads of the stage that produced it."""
        if not self.with_box_refine:
            delta = self.bbox_embed(hidden)
            return self.class_embed(hidden), refine_boxes(delta, references, self.eps)
        logits, boxes = [], []
        for stage in range(schedule.num_stages):
            part = schedule.output_slice(stage)
            logits.append(self.class_embed[stage](hidden[part]))
            delta = self.bbox_embed[stage](hidden[part])
            boxes.append(refine_boxes(delta, references[part], self.eps))
        return torch.cat(logits), torch.cat(boxes)
