"""Pad variable-size images into one batch tensor plus a padding mask."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

__all__ = ["batch_images"]

logger = logging.getLogger(__name__)


def batch_images(
    images: Sequence[torch.Tensor], size_divisibility: int = 1, pad_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images of different sizes by padding at the bottom and right.

    The padded size is the maximum height/width over the batch, rounded up to a multiple of
    ``size_divisibility`` (useful for backbones with a fixed output stride).

    Args:
        images: Tensors of shape [C, H_i, W_i], all with the same C, dtype and device.
        size_divisibility: Padded height and width are multiples of this (>= 1).
        pad_value: Value written into padded pixels (cast to the images' dtype).

    Returns:
        ``(batch, mask)``: Tensor[B, C, Hp, Wp] with the images' dtype and device, and
        BoolTensor[B, Hp, Wp] that is True on padding and False on valid pixels (DETR's
        convention).

    Raises:
        ValueError: On an empty list, a non-3D tensor, mismatched channels, or a bad
            ``size_divisibility``.
    """
    if len(images) == 0:
        raise ValueError("batch_images got an empty list of images")
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
    for i, img in enumerate(images):
        if img.dim() != 3:
            raise ValueError(
                f"batch_images expects [C, H, W] tensors; image {i} has shape {tuple(img.shape)}"
            )
        if img.shape[0] != images[0].shape[0]:
            raise ValueError(
                f"Image {i} has {img.shape[0]} channels but image 0 has {images[0].shape[0]}"
            )

    max_h = max(int(img.shape[1]) for img in images)
    max_w = max(int(img.shape[2]) for img in images)
    # Ceil to a multiple: -(-a // b) is integer ceil division.
    pad_h = -(-max_h // size_divisibility) * size_divisibility
    pad_w = -(-max_w // size_divisibility) * size_divisibility

    first = images[0]
    batch = first.new_full((len(images), first.shape[0], pad_h, pad_w), pad_value)
    mask = torch.ones((len(images), pad_h, pad_w), dtype=torch.bool, device=first.device)
    for i, img in enumerate(images):
        h, w = img.shape[1], img.shape[2]
        batch[i, :, :h, :w].copy_(img)
        mask[i, :h, :w] = False
    return batch, mask
