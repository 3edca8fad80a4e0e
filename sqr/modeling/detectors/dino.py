"""DINO (Zhang et al., ICLR 2023) with Selective Query Recollection in training.

Reproduces detrex's DINO numerics (``projects/dino/modeling/dino.py`` and
``dino_transformer.py`` at e244e6c; R50 4-scale recipe ``configs/models/dino_r50.py``):
Deformable-DETR's encoder on C3-C5 plus a stride-64 level, mixed query selection (reference
boxes from the top encoder proposals, learnt content), contrastive denoising queries
(:mod:`sqr.modeling.denoising`), look-forward-twice box refinement with a head per layer plus
one for the encoder proposals, and three loss families: the matched decoder groups
(``loss_*_s{stage}``), the selected encoder proposals (``loss_*_enc``, all classes) and the
denoising queries (``loss_*_dn_s{stage}``). As in detrex, evaluation runs without a padding
mask, keeps the top 300 query-class pairs and drops boxes that clipping empties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from sqr.layers.init import init_class_prior, init_zero_box_delta, xavier_init_matrices
from sqr.layers.mlp import MLP
from sqr.layers.ms_deform_attn import MultiScaleDeformableAttention, set_backend
from sqr.modeling.criterion import PredictionSet, SetCriterion
from sqr.modeling.decoders.dino import DinoDecoder, DinoDecoderOutput
from sqr.modeling.denoising import ContrastiveDenoising, DenoisingQueries
from sqr.modeling.encoders.deformable import DeformableDetrEncoder, flatten_levels
from sqr.modeling.neck import ChannelMapper
from sqr.modeling.query_selection import MixedQuerySelection
from sqr.modeling.sqr import Recollection, RecollectionSchedule

from .base import QueryDetector, stage_heads


class _Decoded(NamedTuple):
    """One forward pass: the matching groups' predictions, the encoder proposals' and the
    decoder output with the denoising queries it decoded."""

    logits: torch.Tensor
    boxes: torch.Tensor
    schedule: RecollectionSchedule
    enc_logits: torch.Tensor
    enc_boxes: torch.Tensor
    decoded: DinoDecoderOutput
    denoising: DenoisingQueries | None


class DINO(QueryDetector):
    """DINO whose decoder follows a recollection schedule when training.

    Args:
        backbone: returns a dict of feature maps containing ``in_features``.
        in_features: backbone levels fed to the neck, finest first (res3, res4, res5).
        neck: maps them to ``embed_dim`` channels and adds the extra level.
        position_embedding: maps a padding mask [B, H, W] to [B, embed_dim, H, W].
        encoder: the deformable encoder.
        decoder: the DINO decoder.
        denoising: builds the contrastive denoising queries of a training batch.
        num_queries: queries selected from the encoder proposals.
        embed_dim: transformer channels.
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (detrex: 1e-3).
        msda_backend: the sampling backend of every deformable-attention layer, ``"auto"``,
            ``"triton"`` or ``"pytorch"`` (:func:`~sqr.layers.ms_deform_attn.resolve_backend`);
            None keeps the layers' own (``$SQR_MSDA``, else ``"auto"``).
        criterion, recollection, num_classes, pixel_mean, pixel_std,
        select_box_nums_for_evaluation, mask_padding_in_eval, drop_empty_boxes: see
            :class:`QueryDetector`. As detrex, evaluation runs without a padding mask and drops
            the boxes that clipping empties (detectron2's ``detector_postprocess``).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_features: Sequence[str] = ("res3", "res4", "res5"),
        neck: ChannelMapper,
        position_embedding: nn.Module,
        encoder: DeformableDetrEncoder,
        decoder: DinoDecoder,
        denoising: ContrastiveDenoising,
        criterion: SetCriterion,
        recollection: Recollection,
        num_classes: int = 80,
        num_queries: int = 900,
        embed_dim: int = 256,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        select_box_nums_for_evaluation: int = 300,
        inverse_sigmoid_eps: float = 1e-3,
        msda_backend: str | None = None,
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
        self.check_level_counts(neck=neck, encoder=encoder, decoder=decoder)
        label_shape = tuple(denoising.label_enc.weight.shape)
        if label_shape != (num_classes, embed_dim):
            raise ValueError(
                f"denoising label embedding is {label_shape}, expected (num_classes, embed_dim) "
                f"= {(num_classes, embed_dim)}"
            )
        self.backbone = backbone
        self.in_features = tuple(in_features)
        self.neck = neck
        self.position_embedding = position_embedding
        self.level_embeds = nn.Parameter(torch.empty(neck.num_levels, embed_dim))
        self.encoder = encoder
        self.query_selection = MixedQuerySelection(embed_dim, num_queries)
        self.decoder = decoder
        self.denoising = denoising
        # One head per decoder layer, plus the encoder proposals' (the last).
        num_heads = decoder.num_stages + 1
        self.class_embed = nn.ModuleList(
            nn.Linear(embed_dim, num_classes) for _ in range(num_heads)
        )
        self.bbox_embed = nn.ModuleList(MLP(embed_dim, embed_dim, 4, 3) for _ in range(num_heads))
        self.eps = inverse_sigmoid_eps
        self._reset_parameters()
        if msda_backend is not None:
            set_backend(self, msda_backend)

    def _reset_parameters(self) -> None:
        # detrex: xavier on every matrix of the transformer (encoder, decoder, query selection),
        # then MSDA's own init, level embeddings N(0, 1). The heads are deep copies of one head
        # (class prior 0.01, zero last box layer), so they all start equal.
        xavier_init_matrices(self.encoder, self.decoder, self.query_selection)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.level_embeds)
        init_class_prior(self.class_embed[0])
        init_zero_box_delta(self.bbox_embed[0])
        for heads in (self.class_embed, self.bbox_embed):
            for head in heads[1:]:
                head.load_state_dict(heads[0].state_dict())

    def losses(
        self, batched_inputs: list[dict], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Weighted losses per stage, ``{name}_enc`` for the selected encoder proposals and
        ``{name}_dn_s{stage}`` for the denoising queries, for each of the criterion's terms
        (:meth:`QueryDetector.losses`)."""
        out = self._decode(*self.preprocess_image(batched_inputs), targets)
        # One all-reduce for every loss call below, made whatever this rank's batch holds.
        num_boxes = self.criterion.num_boxes(targets)
        sets = [
            PredictionSet(out.logits, out.boxes, targets, out.schedule.group_stage),
            PredictionSet(out.enc_logits[None], out.enc_boxes[None], targets, [0], suffix="_enc"),
        ]
        if out.denoising is not None:
            decoded = out.decoded
            stages = decoded.denoising_group_stage
            logits, boxes = stage_heads(
                self.class_embed,
                self.bbox_embed,
                decoded.denoising_hidden,
                decoded.denoising_references,
                stages,
                self.eps,
            )
            sets.append(out.denoising.prediction_set(logits, boxes, targets, stages))
        losses = self.criterion.set_losses(sets, num_boxes)
        if out.denoising is None:
            # No image has a target: zero denoising losses that still reach the label
            # embedding, so that every parameter gets a gradient (DDP needs them all).
            zero = self.denoising.label_enc.weight[0, 0] * 0.0
            stages = range(out.schedule.num_stages)
            names = self.criterion.weight_dict
            losses.update({f"{n}_dn_s{s}": zero for s in stages for n in names})
        return losses

    def predict_batch(
        self, tensor: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """See :meth:`QueryDetector.predict_batch`. No denoising queries: the matching
        queries never attend to them, so their predictions are the same with or without."""
        out = self._decode(tensor, padding, None)
        return out.logits, out.boxes, out.schedule

    def _decode(
        self,
        tensor: torch.Tensor,
        padding: torch.Tensor,
        targets: list[dict[str, torch.Tensor]] | None,
    ) -> _Decoded:
        """The forward pass of a :meth:`preprocess_image` batch, with denoising queries built
        from ``targets`` when given."""
        features = self.backbone(tensor)
        levels = self.neck([features[name] for name in self.in_features])
        flat = flatten_levels(levels, padding, self.position_embedding, self.level_embeds)
        memory = self.encoder(*flat)
        enc_logits, enc_boxes, content, reference = self.query_selection(
            memory,
            flat.padding_mask,
            flat.spatial_shapes,
            self.class_embed[-1],
            self.bbox_embed[-1],
        )
        denoising = None if targets is None else self.denoising(targets, self.num_queries)
        schedule = self.active_schedule
        # The denoising queries go in as tensors, not as their dataclass, so that a caller
        # (tools/benchmark.py) can replay the decoder call on fresh leaves.
        dn = () if denoising is None else (denoising.content, denoising.boxes, denoising.attn_mask)
        decoded = self.decoder(
            content,
            reference,
            memory,
            flat.padding_mask,
            flat.spatial_shapes,
            flat.ratios,
            self.bbox_embed,
            schedule,
            *dn,
        )
        logits, boxes = stage_heads(
            self.class_embed,
            self.bbox_embed,
            decoded.hidden,
            decoded.references,
            schedule.group_stage,
            self.eps,
        )
        return _Decoded(logits, boxes, schedule, enc_logits, enc_boxes, decoded, denoising)
