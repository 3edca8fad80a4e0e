"""Initialisations the detectors share (the DETR family's recipes)."""

from __future__ import annotations

import math

from torch import nn

from .mlp import MLP


def xavier_init_matrices(*modules: nn.Module) -> None:
    """Xavier-uniform on every parameter with two or more dimensions of ``modules`` (biases and
    norms keep their own init), as the DETR codebases initialise their transformers."""
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


def init_class_prior(*heads: nn.Linear, prior: float = 0.01) -> None:
    """Biases of classification heads such that every class starts at probability ``prior``
    under a sigmoid (focal-loss training, Lin et al. 2017)."""
    for head in heads:
        nn.init.constant_(head.bias, -math.log((1 - prior) / prior))


def init_zero_box_delta(*heads: MLP) -> None:
    """Zero the last layer of box-delta heads, so that they start by keeping the references."""
    for head in heads:
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
