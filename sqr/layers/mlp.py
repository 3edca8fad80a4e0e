"""Small feed-forward blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (none after the last).

    Args:
        input_dim: input channels.
        hidden_dim: channels of the hidden layers.
        output_dim: output channels.
        num_layers: number of Linear layers (>= 1).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs at least one layer, got num_layers={num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(
            nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FFN(nn.Module):
    """Transformer feed-forward block ``linear2(drop(act(linear1(x))))`` with dropout after.

    The residual connection and the norm belong to the calling layer.

    Args:
        embed_dim: input and output channels.
        feedforward_dim: hidden channels.
        dropout: dropout after the activation and after ``linear2``.
        activation: "relu" or "prelu" (DAB-DETR: one learnable slope per FFN).
    """

    def __init__(
        self, embed_dim: int, feedforward_dim: int, dropout: float = 0.0, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, feedforward_dim)
        if activation == "relu":
            self.activation: nn.Module = nn.ReLU(inplace=False)
        elif activation == "prelu":
            self.activation = nn.PReLU()
        else:
            raise ValueError(f"FFN activation must be 'relu' or 'prelu', got {activation!r}")
        self.dropout1 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_dim, embed_dim)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout1(self.activation(self.linear1(x)))))
