"""Detection augmentations built on ``torchvision.transforms.v2``.

All transforms here operate on a sample dict of the form::

    {"image": tv_tensors.Image[3, H, W],
     "boxes": tv_tensors.BoundingBoxes[N, 4] (any format, canvas_size=(H, W)),
     "labels": Tensor[N]}

``torchvision.transforms.v2`` dispatches on the tv_tensor types, so the image and the boxes are
transformed consistently and plain tensors (the labels) pass through untouched, except in
:class:`~torchvision.transforms.v2.SanitizeBoundingBoxes`, which drops the labels of the boxes
it removes (it finds them under the ``"labels"`` key).

The pipelines follow DETR's COCO recipe: random flip, then either a multi-scale resize or a
resize + random crop + multi-scale resize, then removal of boxes that the crop made empty.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "ResizeShortestEdge",
    "RandomSizeCrop",
    "detr_train_augmentation",
    "detr_test_augmentation",
]

logger = logging.getLogger(__name__)


def _check_sizes(name: str, sizes: Sequence[int]) -> list[int]:
    """Validate a non-empty list of positive integer sizes.

    Args:
        name: Argument name, used in the error message.
        sizes: Candidate sizes.

    Returns:
        The sizes as a list of ints.
    """
    sizes = list(sizes)
    if not sizes or any(int(s) != s or s <= 0 for s in sizes):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {sizes!r}")
    return [int(s) for s in sizes]


class ResizeShortestEdge(v2.RandomShortestSize):
    """Resize so the shortest edge is a randomly chosen size, capping the longest edge.

    Same sampling and kernels as :class:`~torchvision.transforms.v2.RandomShortestSize`, but the
    output size is *rounded* (detectron2's ``ResizeShortestEdge``) instead of truncated:
    torchvision computes ``int(h * size / h)``, which float error can turn into ``size - 1``
    (e.g. a 27-pixel side resized to 30 becomes 29). Here the short side is exactly the chosen
    size unless the ``max_size`` cap binds, in which case the long side is exactly ``max_size``.

    Args:
        min_size: Candidate shortest-edge sizes (one is drawn uniformly with the torch RNG).
        max_size: Optional upper bound on the longest edge.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        if height == 0 or width == 0:
            raise ValueError(
                f"ResizeShortestEdge cannot resize an image of {height} x {width} pixels "
                "(height x width): it has no pixels"
            )
        size = self.min_size[int(torch.randint(len(self.min_size), ()))]
        scale = size / min(height, width)
        if self.max_size is not None and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        # Round half up; the products are within float error of an integer when a side hits
        # its target exactly, and rounding makes that exact.
        new_h = max(1, int(height * scale + 0.5))
        new_w = max(1, int(width * scale + 0.5))
        return {"size": (new_h, new_w)}


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose side lengths are drawn from an absolute range.

    The crop height is uniform in ``[min_size, min(H, max_size)]`` and the width uniform in
    ``[min_size, min(W, max_size)]`` (integers, inclusive); the position is uniform over all
    placements that fit inside the image. A side shorter than ``min_size`` is kept whole
    (detectron2's ``RandomCrop(crop_type="absolute_range")`` semantics). All randomness comes
    from the global torch RNG, so seeding torch makes the crop reproducible.

    Boxes are translated and clipped to the crop by the v2 kernels; boxes that end up empty are
    *not* removed here (follow with :class:`~torchvision.transforms.v2.SanitizeBoundingBoxes`).

    Args:
        min_size: Smallest crop side length in pixels.
        max_size: Largest crop side length in pixels.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if min_size <= 0 or max_size < min_size:
            raise ValueError(
                f"RandomSizeCrop needs 0 < min_size <= max_size, got min_size={min_size}, "
                f"max_size={max_size}"
            )
        self.min_size = int(min_size)
        self.max_size = int(max_size)

    def _sample_side(self, length: int) -> tuple[int, int]:
        """Draw a crop length and offset along one image side.

        Args:
            length: Image side length in pixels.

        Returns:
            ``(crop_length, offset)`` with ``0 <= offset <= length - crop_length``.
        """
        low = min(length, self.min_size)
        high = min(length, self.max_size)
        crop = int(torch.randint(low, high + 1, ()))
        offset = int(torch.randint(0, length - crop + 1, ()))
        return crop, offset

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        # Draw both sizes before both offsets, like DETR, to keep the RNG stream easy to reason
        # about; the order only matters for reproducing exact numbers.
        crop_h, top = self._sample_side(height)
        crop_w, left = self._sample_side(width)
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, max_size={self.max_size}"


def detr_train_augmentation(
    min_sizes: Sequence[int] = tuple(range(480, 801, 32)),
    max_size: int = 1333,
    crop_resize_sizes: Sequence[int] = (400, 500, 600),
    crop_size: tuple[int, int] | None = (384, 600),
) -> v2.Transform:
    """DETR's training augmentation.

    Horizontal flip with p=0.5, then with equal probability either

    * a random shortest-edge resize (:class:`ResizeShortestEdge`) to one of ``min_sizes``, long
      side capped at ``max_size``,
    * or a shortest-edge resize to one of ``crop_resize_sizes`` (uncapped), a
      :class:`RandomSizeCrop` with side lengths in ``crop_size``, and the same multi-scale resize
      as the first branch;

    then boxes are clipped to the image and degenerate ones (width or height < 1 pixel) are
    dropped together with their labels.

    Args:
        min_sizes: Candidate shortest-edge sizes of the final image.
        max_size: Upper bound on the longest edge of the final image.
        crop_resize_sizes: Candidate shortest-edge sizes before cropping.
        crop_size: ``(min, max)`` side length of the random crop; None leaves out the crop
            branch (flip and multi-scale resize only, a milder augmentation for small data).

    Returns:
        A v2 transform taking and returning a ``{"image", "boxes", "labels"}`` dict.
    """
    min_sizes = _check_sizes("min_sizes", min_sizes)
    crop_resize_sizes = _check_sizes("crop_resize_sizes", crop_resize_sizes)
    if max_size <= 0:
        raise ValueError(f"max_size must be positive, got {max_size}")
    if crop_size is not None and len(crop_size) != 2:
        raise ValueError(f"crop_size must be a (min, max) pair or None, got {crop_size!r}")

    multi_scale = ResizeShortestEdge(min_sizes, max_size=max_size)
    if crop_size is None:
        scale: v2.Transform = multi_scale
    else:
        resize_crop_resize = v2.Compose(
            [
                ResizeShortestEdge(crop_resize_sizes),
                RandomSizeCrop(crop_size[0], crop_size[1]),
                ResizeShortestEdge(min_sizes, max_size=max_size),
            ]
        )
        # RandomChoice with two equally weighted options == DETR's RandomSelect(p=0.5).
        scale = v2.RandomChoice([multi_scale, resize_crop_resize])
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            scale,
            # Crop/resize kernels already clip, but a record box that pokes slightly outside the
            # image would otherwise be dropped entirely by SanitizeBoundingBoxes.
            v2.ClampBoundingBoxes(),
            # The default labels_getter picks up the "labels" key, so labels stay aligned.
            v2.SanitizeBoundingBoxes(labels_getter="default"),
        ]
    )


def detr_test_augmentation(short_size: int = 800, max_size: int = 1333) -> v2.Transform:
    """Deterministic test-time resize.

    The shortest edge becomes ``short_size`` unless that would make the longest edge exceed
    ``max_size``, in which case the longest edge becomes ``max_size``. Sizes are computed as in
    training (:class:`ResizeShortestEdge` with a single candidate), so train and test scales
    agree.

    Args:
        short_size: Target shortest-edge size.
        max_size: Upper bound on the longest edge.

    Returns:
        A v2 transform taking and returning a ``{"image", "boxes", "labels"}`` dict (or a bare
        image).
    """
    if short_size <= 0 or max_size <= 0:
        raise ValueError(
            f"detr_test_augmentation needs positive sizes, got short_size={short_size}, "
            f"max_size={max_size}"
        )
    # One candidate makes it deterministic; unlike v2.Resize it accepts max_size == short_size
    # (e.g. square test configs).
    return ResizeShortestEdge([int(short_size)], max_size=int(max_size))
