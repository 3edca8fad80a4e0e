"""Sinusoidal position encodings for feature maps and for boxes."""

from __future__ import annotations

import math

import torch
from torch import nn


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(x: torch.Tensor) -> torch.Tensor:
    """[..., F] angles -> [..., F] as sin(even), cos(odd) interleaved (DETR's layout)."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """DETR's 2-d sine encoding of a padded feature map.

    Positions count valid (unpadded) pixels along y and x; when ``normalize`` they are scaled to
    ``(pos + offset) / (last + eps) * scale``. Output channels are ``[pos_y, pos_x]``, each
    ``num_feats`` wide with sin/cos interleaved.

    Args:
        num_feats: channels per axis (the output has ``2 * num_feats``).
        temperature: frequency base.
        normalize: scale positions to [0, scale].
        scale: normalisation range (2*pi in DETR).
        offset: added to positions before normalising (0 in DAB-DETR, -0.5 in Deformable-DETR).
        eps: keeps the normalisation finite for fully padded rows.
    """

    def __init__(
        self,
        num_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask: Bool[B, H, W], True on padding.

        Returns:
            Tensor[B, 2 * num_feats, H, W].
        """
        valid = ~mask
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        freqs = _frequencies(self.num_feats, self.temperature, mask.device)
        pos_y = _interleave_sin_cos(y[..., None] / freqs)
        pos_x = _interleave_sin_cos(x[..., None] / freqs)
        return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


def sine_box_embedding(
    boxes: torch.Tensor, num_feats: int = 128, temperature: float = 10000
) -> torch.Tensor:
    """Sine encoding of normalised boxes or points, DAB-DETR's ``get_sine_pos_embed``.

    Each coordinate is scaled by 2*pi and encoded with ``num_feats`` interleaved sin/cos
    channels; the x and y encodings are swapped so the output reads ``[y, x, (w, h)]``.

    Args:
        boxes: Tensor[..., D] with D = 2 (cx, cy) or 4 (cx, cy, w, h), values in [0, 1].

    Returns:
        Tensor[..., D * num_feats].
    """
    # Slices, not indexing with a list: a list index is a tensor copied from the host.
    swapped = torch.cat([boxes[..., 1:2], boxes[..., 0:1], boxes[..., 2:]], dim=-1)
    return sine_embedding(swapped * (2 * math.pi), num_feats, temperature)


def sine_embedding(coords: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """DETR's sine encoding of each coordinate as it is (no scaling): ``num_feats`` channels per
    coordinate, ``sin`` on the even and ``cos`` on the odd ones of ``coord / temperature **
    (2 * (i // 2) / num_feats)``.

    Args:
        coords: Tensor[..., D].

    Returns:
        Tensor[..., D * num_feats], one block per coordinate in the input's order.
    """
    freqs = _frequencies(num_feats, temperature, coords.device)
    return _interleave_sin_cos(coords[..., None] / freqs).flatten(-2)
