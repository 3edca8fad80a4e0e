"""Turn a dataset record into the model's input dict."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

__all__ = ["DetrDatasetMapper", "ImageReadError", "ImageSizeMismatchError"]

logger = logging.getLogger(__name__)


class ImageReadError(OSError):
    """An image file is missing or cannot be decoded."""


class ImageSizeMismatchError(ValueError):
    """A decoded image's size disagrees with the height/width stored in its record."""


# PIL modes holding more than 8 bits per pixel, all single-channel. convert("RGB") clips these
# to 0..255 instead of scaling, so a 16-bit PNG would come out almost solid white.
_HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def _high_bit_depth_to_uint8(pixels: np.ndarray, mode: str, file_name: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth image to 8 bits.

    The rules are given in :func:`read_image`.

    Args:
        pixels: Array[H, W] decoded in PIL mode ``mode``.
        mode: One of :data:`_HIGH_BIT_DEPTH_MODES`.
        file_name: Path of the image, for error messages.

    Returns:
        uint8 Array[H, W].

    Raises:
        ImageReadError: If a mode ``"I"`` image has negative values or a mode ``"F"`` image
            has NaN or infinite values, which have no 8-bit intensity.
    """
    values = pixels.astype(np.float64)
    if mode == "F":
        if not np.isfinite(values).all():
            raise ImageReadError(
                f"Image file {file_name!r} (mode 'F') has non-finite pixel values; cannot map "
                "them to 8 bits"
            )
        scaled = values * 255.0 if values.max() <= 1.0 else values
    else:
        if values.min() < 0:
            raise ImageReadError(
                f"Image file {file_name!r} (mode {mode!r}) has negative pixel values (min "
                f"{int(values.min())}); cannot map them to 8 bits"
            )
        # 16-bit PNGs open as mode "I" in some Pillow versions, so an "I" image that fits in 16
        # bits is read as 16-bit rather than as a nearly black 32-bit one.
        full_scale = 65535.0 if mode != "I" or values.max() <= 65535 else float(2**31 - 1)
        scaled = values * (255.0 / full_scale)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_image(file_name: str) -> torch.Tensor:
    """Decode an image file as RGB.

    Single-channel images with more than 8 bits per pixel are scaled to 8 bits, then
    replicated into three channels like 8-bit grayscale:

    * 16-bit (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): ``round(v * 255 / 65535)``,
      so 65535 -> 255, 32896 -> 128 and 0 -> 0.
    * 32-bit int (mode ``I``): as 16-bit if all values are at most 65535 (16-bit PNGs may
      open as ``I``), otherwise ``round(v * 255 / (2**31 - 1))``.
    * 32-bit float (mode ``F``): ``round(v * 255)`` if the maximum is at most 1 (intensities
      in [0, 1]), otherwise ``round(v)`` (intensities in 0..255); either way clipped to 0..255.

    Args:
        file_name: Path of the image.

    Returns:
        uint8 Tensor[3, H, W].

    Raises:
        ImageReadError: If the file is missing or not a decodable image, or is a mode ``I``
            image with negative values or a mode ``F`` image with NaN or infinite values.
    """
    try:
        with PILImage.open(file_name) as img:
            mode = img.mode
            # Both branches force the full decode inside the try, so truncated files fail here.
            if mode not in _HIGH_BIT_DEPTH_MODES:
                return F.pil_to_tensor(img.convert("RGB"))
            pixels = np.asarray(img)
    except (OSError, ValueError, PILImage.DecompressionBombError) as e:
        raise ImageReadError(f"Cannot read image file {file_name!r}: {e}") from e
    gray = _high_bit_depth_to_uint8(pixels, mode, file_name)
    return torch.from_numpy(np.repeat(gray[np.newaxis], 3, axis=0))


class DetrDatasetMapper:
    """Load, augment and format one record for a DETR-style model.

    Input record (see :func:`sqr.data.coco.load_coco_json`)::

        {"file_name": str, "image_id": int, "height": int, "width": int,
         "annotations": [{"bbox": [x0, y0, x1, y1], "category_id": int, "iscrowd": 0 | 1}]}

    Output::

        {"image": uint8 Tensor[3, H', W'] (augmented), "height": int, "width": int,
         "image_id": int, "file_name": str,
         "targets": {"boxes": float32 Tensor[N, 4] XYXY in augmented pixels,
                     "labels": int64 Tensor[N]}}      # training only

    In training ``height``/``width`` are the augmented image's size. At test time they are the
    *original* record size, which the model uses to rescale its predictions, and no
    ``"targets"`` are produced (evaluation reads ground truth from the annotation file).

    Crowd annotations are dropped in training, as in DETR. Record boxes are clipped to the
    image before augmentation so that slightly out-of-bounds annotations survive.

    Args:
        augmentation: Callable applied to ``{"image": tv_tensors.Image, "boxes":
            tv_tensors.BoundingBoxes, "labels": int64 Tensor[N]}`` and returning a dict with the
            same keys, e.g. :func:`sqr.data.transforms.detr_train_augmentation`. At test time
            it receives ``{"image": tv_tensors.Image}`` only.
        is_train: Whether to produce training targets.
    """

    def __init__(self, augmentation: Callable[[dict[str, Any]], dict[str, Any]], is_train: bool):
        self.augmentation = augmentation
        self.is_train = is_train

    def _annotations_to_tensors(
        self, record: dict[str, Any], canvas_size: tuple[int, int]
    ) -> tuple[tv_tensors.BoundingBoxes, torch.Tensor]:
        """Collect the record's boxes and labels.

        Args:
            record: Dataset record.
            canvas_size: ``(H, W)`` of the decoded image.

        Returns:
            ``(boxes, labels)``: BoundingBoxes[N, 4] XYXY float32 clipped to the image, and
            int64 Tensor[N].
        """
        annos = record.get("annotations", [])
        if self.is_train:
            annos = [a for a in annos if not a.get("iscrowd", 0)]
        try:
            boxes = torch.tensor([a["bbox"] for a in annos], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([a["category_id"] for a in annos], dtype=torch.int64)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"Malformed annotations in record for {record.get('file_name')!r}: each needs "
                f"'bbox' as [x0, y0, x1, y1] and an integer 'category_id' ({e})"
            ) from e
        boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas_size)
        return F.clamp_bounding_boxes(boxes), labels

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        """Map one record.

        Args:
            record: Dataset record (not modified).

        Returns:
            The model input dict described in the class docstring.

        Raises:
            ImageReadError: If the image cannot be read.
            ImageSizeMismatchError: If the decoded size differs from the record's.
        """
        file_name = record["file_name"]
        image = read_image(file_name)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        rec_h, rec_w = record.get("height"), record.get("width")
        if (rec_h is not None and rec_h != h) or (rec_w is not None and rec_w != w):
            raise ImageSizeMismatchError(
                f"Image {file_name!r} decodes to height x width = {h} x {w}, but its record says "
                f"{rec_h} x {rec_w}"
            )

        sample: dict[str, Any] = {"image": tv_tensors.Image(image)}
        if self.is_train:
            sample["boxes"], sample["labels"] = self._annotations_to_tensors(record, (h, w))
        sample = self.augmentation(sample)

        out_image = sample["image"].as_subclass(torch.Tensor)
        out: dict[str, Any] = {
            "image": out_image,
            "image_id": record["image_id"],
            "file_name": file_name,
        }
        if self.is_train:
            out["height"], out["width"] = int(out_image.shape[-2]), int(out_image.shape[-1])
            out["targets"] = {
                "boxes": sample["boxes"].as_subclass(torch.Tensor).to(torch.float32),
                "labels": sample["labels"].to(torch.int64),
            }
        else:
            out["height"], out["width"] = h, w
        return out
