"""AdaMixer's decoder: stages with unshared parameters, with group-batched query recollection.

Numerics follow ``AdaMixerDecoderStage`` and ``AdaMixerDecoder`` of the SQR fork of MMDetection
(``mmdet/models/roi_heads/`` at b576a6e). The decoder runs any
:class:`~sqr.modeling.sqr.RecollectionSchedule`: the groups a stage decodes sit side by
side on the query axis ``[B, G*Q, C]`` and sample the same, unrepeated feature maps; only the
IoF-biased self-attention separates them (reshaped to ``[B*G, Q, C]``, the IoF computed within each
group). Each group's xyzr boxes travel with it and are detached between stages, as in the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sqr.layers.adamixer_ops import (
    AdaptiveMixing,
    AdaptiveSampling,
    box_iof,
    refine_xyzr,
    xyzr_position_embedding,
    xyzr_to_xyxy,
)
from sqr.layers.init import init_class_prior
from sqr.layers.mlp import FFN
from sqr.modeling.sqr import DecodedStage, LayerCall, RecollectionSchedule, stack_groups

from .base import RecollectingDecoder


def _branch(embed_dim: int, out_dim: int) -> nn.Sequential:
    """Linear, LayerNorm, ReLU, then the output Linear (AdaMixer's class and box branches)."""
    return nn.Sequential(
        nn.Linear(embed_dim, embed_dim),
        nn.LayerNorm(embed_dim),
        nn.ReLU(),
        nn.Linear(embed_dim, out_dim),
    )


class IoFSelfAttention(nn.Module):
    """Multi-head self-attention whose logits are biased by ``log(IoF) * tau_head``.

    ``tau`` is learnt per head. Parameters are named as in ``nn.MultiheadAttention``; the
    attention is written out (the maps are only Q x Q) so that it computes the same numbers with
    and without autograd: fused kernels (``nn.MultiheadAttention``'s fast path, the choice of
    ``scaled_dot_product_attention`` backend) change with it.

    Args:
        embed_dim: channels.
        num_heads: heads.
        dropout: dropout on the attention weights and on the output.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.iof_tau = nn.Parameter(torch.empty(num_heads))
        self.proj_drop = nn.Dropout(dropout)
        self.num_heads = num_heads
        self.dropout = dropout
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)

    def forward(self, x: torch.Tensor, log_iof: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: Tensor[N, Q, C]: N independent query sets (images x groups), position included.
            log_iof: Tensor[N, Q, Q], ``log(iof + eps)`` of each set's boxes.

        Returns:
            Tensor[N, Q, C], the input plus the attention output.
        """
        channels = x.shape[-1]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, channels // self.num_heads)).transpose(1, 2)

        q, k, v = (
            heads(t) for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1)
        )
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        logits = logits + log_iof[:, None] * self.iof_tau[:, None, None]  # [N, heads, Q, Q]
        weights = F.dropout(logits.softmax(-1), self.dropout, self.training)
        out = (weights @ v).transpose(1, 2).flatten(2)
        return x + self.proj_drop(self.out_proj(out))


class AdaMixerStage(nn.Module):
    """One decoder stage: IoF-biased self-attention, adaptive sampling and mixing, FFN, and the
    stage's own class and box branches.

    Args:
        embed_dim: query channels.
        num_heads: self-attention heads (each with a learnable IoF weight ``iof_tau``).
        feedforward_dim: FFN hidden channels.
        num_classes: classification outputs.
        feat_channels: channels of the feature maps.
        num_sampling_groups: sampling/mixing groups (the feature channels split in as many).
        in_points: sampled points per group.
        out_points: spatially mixed points per group.
        featmap_strides: strides of the feature levels.
        dropout: dropout in self-attention and FFN (0 in the reference recipe).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        num_classes: int = 80,
        feat_channels: int = 256,
        num_sampling_groups: int = 4,
        in_points: int = 32,
        out_points: int = 128,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % 8:
            raise ValueError(f"embed_dim must be a multiple of 8 (xyzr embedding), got {embed_dim}")
        self.self_attn = IoFSelfAttention(embed_dim, num_heads, dropout)
        self.self_attn_norm = nn.LayerNorm(embed_dim)
        self.sampling = AdaptiveSampling(embed_dim, num_sampling_groups, in_points, featmap_strides)
        self.mixing = AdaptiveMixing(
            embed_dim, feat_channels, num_sampling_groups, in_points, out_points
        )
        self.mixing_norm = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout, "relu")
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.cls_branch = _branch(embed_dim, num_classes)
        self.reg_branch = _branch(embed_dim, 4)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # mmdet: every Linear reset (default bias) then Xavier weights (the attention's input
        # projection keeps its own Xavier init and zero bias); class prior 0.01, zero box
        # deltas, tau ~ U(0, 4); the sampling and mixing layers then set their own starts.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
                nn.init.xavier_uniform_(module.weight)
        init_class_prior(self.cls_branch[-1])
        nn.init.zeros_(self.reg_branch[-1].weight)
        nn.init.zeros_(self.reg_branch[-1].bias)
        nn.init.uniform_(self.self_attn.iof_tau, 0.0, 4.0)
        self.sampling.reset_parameters()
        nn.init.zeros_(self.mixing.parameter_generator.weight)

    def forward(
        self,
        content: torch.Tensor,
        xyzr: torch.Tensor,
        features: Sequence[torch.Tensor],
        num_groups: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode ``num_groups`` query groups side by side.

        Args:
            content: Tensor[B, G*Q, C] query content.
            xyzr: Tensor[B, G*Q, 4] boxes in pixels (detached: no gradient flows into them).
            features: the L maps Tensor[B, C_feat, H_l, W_l].
            num_groups: G; queries attend only within their group.

        Returns:
            content Tensor[B, G*Q, C]; class logits Tensor[B, G*Q, K]; refined xyzr
            Tensor[B, G*Q, 4] (attached to the box branch).
        """
        batch, length, channels = content.shape
        num_queries = length // num_groups
        with torch.no_grad():
            boxes = xyzr_to_xyxy(xyzr).view(batch * num_groups, num_queries, 4)
            log_iof = (box_iof(boxes) + 1e-7).log()  # [B*G, Q, Q]
            pos = xyzr_position_embedding(xyzr, channels // 4)
        # mmcv's attention gets the position-embedded query as query, key, value and residual.
        x = (content + pos).view(batch * num_groups, num_queries, channels)
        content = self.self_attn_norm(self.self_attn(x, log_iof)).view(batch, length, channels)
        sampled = self.sampling(content, xyzr, features)
        content = self.mixing_norm(self.mixing(sampled, content))
        content = self.ffn_norm(content + self.ffn(content))
        logits = self.cls_branch(content)
        return content, logits, refine_xyzr(xyzr, self.reg_branch(content))


class AdaMixerDecoder(RecollectingDecoder):
    """A cascade of :class:`AdaMixerStage` with unshared parameters. Each stage refines its
    boxes itself; the refined boxes enter the reserve detached.

    Args:
        num_stages: decoder stages.
        embed_dim, num_heads, feedforward_dim, num_classes, feat_channels, num_sampling_groups,
        in_points, out_points, featmap_strides, dropout: see :class:`AdaMixerStage`.
        checkpoint_recollected: in training, run the recollected groups of each stage under
            activation checkpointing, one group at a time (the plain chain group runs normally):
            same results, much less memory for the per-query mixing tensors, some extra time.
    """

    def __init__(
        self,
        num_stages: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        num_classes: int = 80,
        feat_channels: int = 256,
        num_sampling_groups: int = 4,
        in_points: int = 32,
        out_points: int = 128,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        dropout: float = 0.0,
        checkpoint_recollected: bool = False,
    ) -> None:
        super().__init__(
            (
                AdaMixerStage(
                    embed_dim=embed_dim,
                    num_heads=num_heads,
                    feedforward_dim=feedforward_dim,
                    num_classes=num_classes,
                    feat_channels=feat_channels,
                    num_sampling_groups=num_sampling_groups,
                    in_points=in_points,
                    out_points=out_points,
                    featmap_strides=featmap_strides,
                    dropout=dropout,
                )
                for _ in range(num_stages)
            ),
            checkpoint_recollected,
        )
        self.num_levels = len(featmap_strides)

    def forward(
        self,
        content: torch.Tensor,
        xyzr: torch.Tensor,
        *features: torch.Tensor,
        schedule: RecollectionSchedule,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every group the schedule asks for.

        The feature maps come as separate arguments (not a list) so that every input tensor is
        visible to callers that re-run the decoder on detached copies (tools/benchmark.py).

        Args:
            content: Tensor[B, Q, C] initial query content.
            xyzr: Tensor[B, Q, 4] initial boxes in pixels.
            *features: the L maps Tensor[B, C_feat, H_l, W_l], fine to coarse.
            schedule: which groups each stage decodes.

        Returns:
            logits Tensor[G_total, B, Q, K] and boxes Tensor[G_total, B, Q, 4] (xyxy in pixels)
            of every output group, stage-major.
        """
        if len(features) != self.num_levels:
            raise ValueError(f"got {len(features)} feature maps, expected {self.num_levels}")
        num_queries = content.shape[1]
        # The initial boxes never carry a gradient; later ones are detached between stages, as
        # in the baseline.
        stages = self.run_schedule(schedule, content, xyzr.detach(), features)
        logits = [stage.output[1] for stage in stages]
        boxes = [xyzr_to_xyxy(stage.output[2]) for stage in stages]
        return stack_groups(logits, num_queries), stack_groups(boxes, num_queries)

    def stage_call(self, stage: int, inputs: Sequence[torch.Tensor]) -> LayerCall:
        """``inputs`` are the feature maps."""
        layer = self.layers[stage]
        return lambda content, xyzr, num_groups: layer(content, xyzr, inputs, num_groups)

    def refine_references(
        self, stage: int, decoded: DecodedStage, inputs: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        return list(decoded.output[2].detach().split(decoded.group_sizes, dim=1))
