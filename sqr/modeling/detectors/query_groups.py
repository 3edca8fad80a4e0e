"""Decoding query groups side by side: activation checkpointing of the recollected groups, and
the group-major layout the decoders return.

Every decoder of this package decodes the groups of a stage side by side on the query axis,
``[B, G*Q, C]``; only self-attention separates them. These helpers hold what the decoders share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch.utils.checkpoint import checkpoint

StageOutput = TypeVar("StageOutput", torch.Tensor, tuple[torch.Tensor, ...])


def run_groups(
    decode: Callable[[int, int], StageOutput], num_groups: int, checkpoint_recollected: bool
) -> StageOutput:
    """Decode one stage's groups, the recollected ones under activation checkpointing if asked.

    With ``checkpoint_recollected`` (callers pass it only in training) and more than one group,
    the recollected groups (all but the last, which is the plain chain) are recomputed in
    backward instead of keeping their activations, one group at a time so that the
    recomputation never holds more than one group's activations; the chain runs normally.
    Self-attention is per group, so splitting the groups off changes nothing.

    Args:
        decode: ``decode(first, stop)`` decodes groups ``first .. stop - 1`` side by side and
            returns Tensor[B, (stop - first) * Q, ...] or a tuple of such tensors.
        num_groups: G, the groups this stage decodes.
        checkpoint_recollected: checkpoint the recollected groups.

    Returns:
        What ``decode(0, G)`` returns (each tensor [B, G*Q, ...]).
    """
    if not checkpoint_recollected or num_groups == 1:
        return decode(0, num_groups)
    outputs = [checkpoint(decode, g, g + 1, use_reentrant=False) for g in range(num_groups - 1)]
    outputs.append(decode(num_groups - 1, num_groups))
    if isinstance(outputs[0], torch.Tensor):
        return torch.cat(outputs, dim=1)
    return tuple(torch.cat(parts, dim=1) for parts in zip(*outputs, strict=True))


def take_groups(x: torch.Tensor, first: int, stop: int, num_queries: int) -> torch.Tensor:
    """Groups ``first .. stop - 1`` of ``x`` [B, G*Q, ...]: [B, (stop - first)*Q, ...].

    All the groups come back as ``x`` itself, not a view, so that the decoder's autograd graph
    (and with it the order in which gradients are summed) is the same as without a split.
    """
    if first == 0 and stop * num_queries == x.shape[1]:
        return x
    return x[:, first * num_queries : stop * num_queries]


def stack_groups(per_stage: Sequence[torch.Tensor], num_queries: int) -> torch.Tensor:
    """Every stage's output groups, group-major.

    Args:
        per_stage: per stage Tensor[B, G_s*Q, D], its groups side by side.
        num_queries: Q.

    Returns:
        Tensor[G_total, B, Q, D], the groups in stage order.
    """
    flat = torch.cat(list(per_stage), dim=1)  # [B, G_total*Q, D]
    return flat.view(flat.shape[0], -1, num_queries, flat.shape[-1]).transpose(0, 1)
