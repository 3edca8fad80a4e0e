"""RT-DETRv2 (Lv et al., 2024) with Selective Query Recollection in training.

Reproduces lyuwenyu/RT-DETR ``rtdetrv2_pytorch`` at 068dfde (``src/zoo/rtdetr/rtdetr.py``,
``rtdetrv2_decoder.py``, ``denoising.py``, ``rtdetrv2_criterion.py``,
``rtdetr_postprocessor.py``): a PResNet-vd backbone, the HybridEncoder, a 1x1 convolution and
BatchNorm per level before the decoder (the official decoder's ``input_proj``), queries selected
from the encoder tokens (:class:`RTDETRQuerySelection`), contrastive denoising
(:class:`RTDETRDenoising`), the v2 decoder (:mod:`sqr.modeling.decoders.rtdetrv2`) with a head
per layer, and three loss families: the matched decoder groups (``loss_*_s{stage}``), the
selected encoder proposals (``loss_*_enc``) and the denoising queries (``loss_*_dn_s{stage}``).

RT-DETR knows no padding: its batches are resized to one size, and no layer reads a mask. Here
too the padding mask is never read (a padded batch is decoded as the official model decodes the
padded images). Images are scaled to [0, 1] without mean or std. Evaluation keeps the top 300
query-class pairs with boxes scaled to the output size, neither clipped nor dropped: RT-DETR's
post-processor, which is :meth:`QueryDetector.postprocess` with those settings.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import nn

from sqr.layers.box_ops import inverse_sigmoid
from sqr.layers.constants import constant_tensor
from sqr.layers.init import init_class_prior, init_zero_box_delta
from sqr.layers.mlp import MLP
from sqr.layers.ms_deform_attn import resolve_backend
from sqr.layers.ms_deform_attn_v2 import DeformableAttentionV2
from sqr.modeling.criterion import PredictionSet, SetCriterion
from sqr.modeling.decoders.dino import DinoDecoderOutput
from sqr.modeling.decoders.rtdetrv2 import RTDETRv2Decoder
from sqr.modeling.denoising import ContrastiveDenoising, DenoisingQueries
from sqr.modeling.query_selection import EncoderQuerySelection
from sqr.modeling.sqr import Recollection, RecollectionSchedule

from .base import QueryDetector, stage_heads

QUERY_SELECT_METHODS = ("default", "agnostic")


class RTDETRQuerySelection(EncoderQuerySelection):
    """RT-DETR's queries: the encoder tokens whose best class scores highest give the decoder
    its reference boxes (detached) and, detached too, its content (their projected memory), or
    a learnt content.

    Every token proposes a box around itself, side ``0.05 * 2**level``, with the tokens closer
    than 0.01 to the border proposing nothing: RT-DETR's anchors, which are
    :func:`~sqr.modeling.query_selection.token_proposals` without padding.

    Args:
        embed_dim: channels.
        num_classes: classes of the encoder's class head (``"agnostic"``: one).
        num_queries: tokens selected.
        query_select_method: ``"default"`` (rank by the best class) or ``"agnostic"`` (one
            class-agnostic score).
        learn_query_content: learnt content (``tgt_embed``) instead of the selected memory.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_classes: int = 80,
        num_queries: int = 300,
        query_select_method: str = "default",
        learn_query_content: bool = False,
    ) -> None:
        super().__init__(embed_dim)
        if query_select_method not in QUERY_SELECT_METHODS:
            raise ValueError(
                f"query_select_method={query_select_method!r}: choose one of "
                f"{', '.join(QUERY_SELECT_METHODS)}"
            )
        self.agnostic = query_select_method == "agnostic"
        self.class_head = nn.Linear(embed_dim, 1 if self.agnostic else num_classes)
        self.box_head = MLP(embed_dim, embed_dim, 4, 3)
        self.content = nn.Embedding(num_queries, embed_dim) if learn_query_content else None
        self.num_queries = num_queries
        nn.init.xavier_uniform_(self.enc_output.weight)
        if self.content is not None:
            nn.init.xavier_uniform_(self.content.weight)
        init_class_prior(self.class_head)
        init_zero_box_delta(self.box_head)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.max(-1)[0]  # "agnostic": the one score

    def forward(
        self, memory: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            memory: Tensor[B, S, C], the flattened levels.
            spatial_shapes: (H_l, W_l) per level.

        Returns:
            ``(logits, boxes, content, reference)``: the selected tokens' class logits
            Tensor[B, Q, K] (K = 1 when agnostic) and boxes Tensor[B, Q, 4] (normalised cxcywh,
            attached: the encoder loss trains them), the decoder's initial content
            Tensor[B, Q, C] and its reference boxes Tensor[B, Q, 4] (the same boxes, detached).
        """
        no_padding = memory.new_zeros(memory.shape[:2], dtype=torch.bool)
        scored = self.propose(
            memory, no_padding, spatial_shapes, self.class_head, self.box_head, self.num_queries
        )
        coords = scored.chosen(scored.coords)
        if self.content is None:
            content = scored.chosen(scored.memory).detach()
        else:
            content = self.content.weight[None].expand(memory.shape[0], -1, -1)
        return scored.chosen(scored.logits), coords.sigmoid(), content, coords.detach().sigmoid()


class RTDETRDenoising(ContrastiveDenoising):
    """:class:`~sqr.modeling.denoising.ContrastiveDenoising` with RT-DETR's unfilled slots:
    their box is ``sigmoid(logit(0))`` (RT-DETR noises zero boxes and takes their clamped
    logit), not the zero logit of detrex. The noise has the same distribution as RT-DETR's
    (``sync_free_label_noise=True`` draws a label for every copy, as RT-DETR does), from other
    random numbers."""

    def forward(
        self, targets: Sequence[dict[str, torch.Tensor]], num_queries: int
    ) -> DenoisingQueries | None:
        queries = super().forward(targets, num_queries)
        if queries is None:
            return None
        boxes = queries.boxes
        slot = torch.arange(boxes.shape[1], device=boxes.device) % (queries.group_size // 2)
        # Host counts copied without blocking the host (a plain torch.tensor(..., device) would).
        counts = constant_tensor(slot, list(queries.num_targets))
        filled = slot[None] < counts[:, None]  # [B, P]
        empty = inverse_sigmoid(boxes.new_zeros(()), self.eps).sigmoid()
        return replace(queries, boxes=torch.where(filled[..., None], boxes, empty))


class _Decoded(NamedTuple):
    logits: torch.Tensor
    boxes: torch.Tensor
    schedule: RecollectionSchedule
    enc_logits: torch.Tensor
    enc_boxes: torch.Tensor
    decoded: DinoDecoderOutput
    denoising: DenoisingQueries | None


class RTDETRv2(QueryDetector):
    """RT-DETRv2 whose decoder follows a recollection schedule when training.

    Args:
        backbone: returns a dict of feature maps (PResNet).
        encoder: the HybridEncoder (picks its ``in_features`` from the backbone's dict).
        decoder: the RT-DETRv2 decoder; evaluation runs its first ``eval_idx + 1`` layers.
        denoising: builds the contrastive denoising queries of a training batch.
        num_queries: queries selected from the encoder tokens.
        embed_dim: transformer channels.
        feat_channels: channels of the encoder's levels, projected to ``embed_dim`` by
            ``input_proj`` (the official decoder's ``feat_channels``; RT-DETRv2-X: 384);
            None: ``embed_dim``.
        query_select_method, learn_query_content: see :class:`RTDETRQuerySelection`.
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (RT-DETR: 1e-5).
        msda_backend: sampling backend of every cross-attention (None: ``$SQR_MSDA``, else
            ``"auto"``).
        criterion, recollection, num_classes, pixel_mean, pixel_std,
        select_box_nums_for_evaluation, size_divisibility, mask_padding_in_eval, clip_boxes,
        drop_empty_boxes: see :class:`QueryDetector`. RT-DETR: images in [0, 1], top 300,
        boxes neither clipped nor dropped; sizes divisible by 32 (the encoder's levels halve).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        encoder: nn.Module,
        decoder: RTDETRv2Decoder,
        denoising: ContrastiveDenoising,
        criterion: SetCriterion,
        recollection: Recollection,
        num_classes: int = 80,
        num_queries: int = 300,
        embed_dim: int = 256,
        feat_channels: int | None = None,
        query_select_method: str = "default",
        learn_query_content: bool = False,
        pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        pixel_std: Sequence[float] = (255.0, 255.0, 255.0),
        select_box_nums_for_evaluation: int = 300,
        inverse_sigmoid_eps: float = 1e-5,
        msda_backend: str | None = None,
        size_divisibility: int = 32,
        mask_padding_in_eval: bool = False,
        clip_boxes: bool = False,
        drop_empty_boxes: bool = False,
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
            mask_padding_in_eval=mask_padding_in_eval,
            clip_boxes=clip_boxes,
            drop_empty_boxes=drop_empty_boxes,
        )
        # Evaluation runs the decoder's first eval_idx + 1 layers.
        self.plain_schedule = RecollectionSchedule(decoder.num_eval_stages, mode="none")
        self.check_level_counts(encoder=encoder, decoder=decoder)
        label_shape = tuple(denoising.label_enc.weight.shape)
        if label_shape != (num_classes, embed_dim):
            raise ValueError(
                f"denoising label embedding is {label_shape}, expected (num_classes, embed_dim) "
                f"= {(num_classes, embed_dim)}"
            )
        self.backbone = backbone
        self.encoder = encoder
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(feat_channels or embed_dim, embed_dim, 1, bias=False),
                    norm=nn.BatchNorm2d(embed_dim),
                )
            )
            for _ in range(decoder.num_levels)
        )
        self.query_selection = RTDETRQuerySelection(
            embed_dim, num_classes, num_queries, query_select_method, learn_query_content
        )
        self.decoder = decoder
        self.denoising = denoising
        self.class_embed = nn.ModuleList(
            nn.Linear(embed_dim, num_classes) for _ in range(decoder.num_stages)
        )
        self.bbox_embed = nn.ModuleList(
            MLP(embed_dim, embed_dim, 4, 3) for _ in range(decoder.num_stages)
        )
        self.eps = inverse_sigmoid_eps
        # The class-agnostic encoder proposals are supervised as one class.
        self.enc_criterion = (
            SetCriterion(
                1,
                criterion.matcher,
                criterion.weight_dict,
                l1_box_format=criterion.l1_box_format,
                giou_eps=criterion.giou_eps,
                losses=criterion.terms,
            )
            if self.query_selection.agnostic
            else None
        )
        # RT-DETR: class prior 0.01 and zero last box layer on every head, default init of the
        # rest of the heads; xavier on the input projections.
        init_class_prior(*self.class_embed)
        init_zero_box_delta(*self.bbox_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)
        if msda_backend is not None:
            backend = resolve_backend(msda_backend)
            for module in self.modules():
                if isinstance(module, DeformableAttentionV2):
                    module.backend = backend

    def losses(
        self, batched_inputs: list[dict], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Weighted losses per stage, ``{name}_enc`` for the selected encoder proposals and
        ``{name}_dn_s{stage}`` for the denoising queries (:meth:`QueryDetector.losses`)."""
        images, _ = self.preprocess_image(batched_inputs)  # the padding is not read
        out = self._decode(images, targets)
        num_boxes = self.criterion.num_boxes(targets)  # the step's one collective
        sets = [PredictionSet(out.logits, out.boxes, targets, out.schedule.group_stage)]
        enc_targets = targets
        if self.enc_criterion is not None:
            enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
        enc_set = PredictionSet(
            out.enc_logits[None], out.enc_boxes[None], enc_targets, [0], suffix="_enc"
        )
        if self.enc_criterion is None:
            sets.append(enc_set)
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
        if self.enc_criterion is not None:
            losses.update(self.enc_criterion.set_losses([enc_set], num_boxes))
        if out.denoising is None:
            # No image has a target: zero denoising losses that still reach the label
            # embedding, so that every parameter gets a gradient (DDP needs them all).
            zero = self.denoising.label_enc.weight[0, 0] * 0.0
            names = self.criterion.weight_dict
            stages = range(out.schedule.num_stages)
            losses.update({f"{n}_dn_s{s}": zero for s in stages for n in names})
        return losses

    def predict_batch(
        self, images: torch.Tensor, padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RecollectionSchedule]:
        """See :meth:`QueryDetector.predict_batch`; ``padding`` is not read (RT-DETR has no
        mask). In evaluation the groups are the first ``eval_idx + 1`` stages."""
        out = self._decode(images, None)
        return out.logits, out.boxes, out.schedule

    def _decode(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None
    ) -> _Decoded:
        """The forward pass, with denoising queries built from ``targets`` when given."""
        levels = self.encoder(self.backbone(images))
        levels = [proj(x) for proj, x in zip(self.input_proj, levels, strict=True)]
        shapes = [tuple(x.shape[-2:]) for x in levels]
        memory = torch.cat([x.flatten(2).transpose(1, 2) for x in levels], 1)
        enc_logits, enc_boxes, content, reference = self.query_selection(memory, shapes)
        denoising = None if targets is None else self.denoising(targets, self.num_queries)
        schedule = self.active_schedule
        dn = () if denoising is None else (denoising.content, denoising.boxes, denoising.attn_mask)
        decoded = self.decoder(content, reference, memory, shapes, self.bbox_embed, schedule, *dn)
        logits, boxes = stage_heads(
            self.class_embed,
            self.bbox_embed,
            decoded.hidden,
            decoded.references,
            schedule.group_stage,
            self.eps,
        )
        return _Decoded(logits, boxes, schedule, enc_logits, enc_boxes, decoded, denoising)
