"""Turn a dataset record into the model's input dict."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

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


def read_image(file_name: str) -> torch.Tensor:
    """Decode an image file as RGB.

    Args:
        file_name: Path of the image.

    Returns:
        uint8 Tensor[3, H, W].

    Raises:
        ImageReadError: If the file is missing or not a decodable image.
    """
    try:
        with PILImage.open(file_name) as img:
            # convert() forces the full decode inside the try, so truncated files fail here.
            rgb = img.convert("RGB")
    except (OSError, ValueError, PILImage.DecompressionBombError) as e:
        raise ImageReadError(f"Cannot read image file {file_name!r}: {e}") from e
    return F.pil_to_tensor(rgb)


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
