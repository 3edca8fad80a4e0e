"""RT-DETR's data pipeline: its augmentation, its multi-scale batch collate and its stop-epoch
policy (``rtdetrv2_pytorch`` ``configs/rtdetrv2/include/dataloader.yml``).

Training, per image (``torchvision.transforms.v2`` ops, in RT-DETR's order and parameters)::

    RandomPhotometricDistort(p=0.5) -> RandomZoomOut(fill=0) -> RandomIoUCrop (with p=0.8)
      -> SanitizeBoundingBoxes(min_size=1) -> RandomHorizontalFlip -> Resize(640x640)
      -> SanitizeBoundingBoxes(min_size=1)

The first three ("strong") ops run only while the epoch is below ``stop_epoch``
(:class:`UntilEpoch`); the batch collate (:class:`MultiScaleCollate`) resizes every image of a
batch to one size drawn from RT-DETR's scale list, also only before ``stop_epoch``. The epoch
travels with the samples: :class:`~sqr.data.samplers.TrainingBatchSampler` gives each the epoch
of its iteration, :class:`~sqr.data.build.MapDataset` tells the :class:`UntilEpoch` gates of the
mapper before mapping it and records it in the sample, and the collate reads it there. So the
policy follows the epoch in loader workers as in the main process, and after a resume.

Images stay uint8 and boxes absolute XYXY, as the mapper gives them; RT-DETR's last two ops
(scale pixels to [0, 1], boxes to normalised cxcywh) are the model's ``pixel_mean``/``pixel_std``
and target normalisation here.

Written here because ``transforms.v2`` lacks them: :class:`RandomApplyIoUCrop` (v2's
``RandomIoUCrop`` always crops; RT-DETR skips it with probability 0.2), :class:`UntilEpoch` and
:class:`MultiScaleCollate`. Samples are the ``{"image", "boxes", "labels"}`` dicts of
:class:`~sqr.data.mapper.DetrDatasetMapper`; the collate takes and returns its output dicts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

__all__ = [
    "RTDETR_SCALES",
    "MultiScaleCollate",
    "RandomApplyIoUCrop",
    "UntilEpoch",
    "rtdetr_test_augmentation",
    "rtdetr_train_augmentation",
]

logger = logging.getLogger(__name__)

# RT-DETR's collate scales: 480..800 step 32, with 640 listed three times (so 3/13 of the
# batches train at the base size).
RTDETR_SCALES: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800)


class RandomApplyIoUCrop(v2.RandomIoUCrop):
    """:class:`~torchvision.transforms.v2.RandomIoUCrop` applied with probability ``p``.

    The coin is one ``torch.rand`` draw before the crop's own draws, as in RT-DETR.

    Args:
        p: Probability of cropping.
        **kwargs: :class:`~torchvision.transforms.v2.RandomIoUCrop`'s arguments.
    """

    def __init__(self, p: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomApplyIoUCrop needs 0 <= p <= 1, got p={p}")
        self.p = float(p)

    def forward(self, *inputs: Any) -> Any:
        if torch.rand(1) >= self.p:
            return inputs if len(inputs) > 1 else inputs[0]
        return super().forward(*inputs)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class UntilEpoch(nn.Module):
    """Run ``transform`` while the epoch is below ``stop_epoch``; pass samples through after.

    RT-DETR's ``stop_epoch`` policy: epochs ``[stop_epoch, ...)`` train without the strong
    augmentation. The epoch starts at 0 and is set with :meth:`set_epoch`, which
    :class:`~sqr.data.build.MapDataset` calls with each training sample's epoch.

    Args:
        transform: The transform to stop.
        stop_epoch: First epoch (0-based) without it.
    """

    def __init__(self, transform: nn.Module, stop_epoch: int) -> None:
        super().__init__()
        if stop_epoch < 0:
            raise ValueError(f"stop_epoch must be non-negative, got {stop_epoch}")
        self.transform = transform
        self.stop_epoch = int(stop_epoch)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Say which epoch (0-based) the next samples belong to."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    @property
    def active(self) -> bool:
        return self.epoch < self.stop_epoch

    def forward(self, *inputs: Any) -> Any:
        if self.active:
            return self.transform(*inputs)
        return inputs if len(inputs) > 1 else inputs[0]

    def extra_repr(self) -> str:
        return f"stop_epoch={self.stop_epoch}, epoch={self.epoch}"


def rtdetr_train_augmentation(
    size: int = 640, stop_epoch: int = 71, iou_crop_p: float = 0.8, zoom_out_fill: int = 0
) -> v2.Compose:
    """RT-DETR's training augmentation (see the module docstring).

    Args:
        size: Final square side; the resize does not keep the aspect ratio.
        stop_epoch: First epoch (0-based) without photometric distortion, zoom-out and IoU
            crop (71 of 72 epochs, 117 of 120).
        iou_crop_p: Probability of the IoU crop.
        zoom_out_fill: Pixel value of the zoomed-out canvas.

    Returns:
        A v2 transform of ``{"image", "boxes", "labels"}`` dicts; its first element is the
        :class:`UntilEpoch` gate of the strong ops.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    strong = v2.Compose(
        [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill=zoom_out_fill),
            RandomApplyIoUCrop(p=iou_crop_p),
        ]
    )
    return v2.Compose(
        [
            UntilEpoch(strong, stop_epoch),
            v2.SanitizeBoundingBoxes(min_size=1),
            v2.RandomHorizontalFlip(),
            v2.Resize((size, size)),
            v2.SanitizeBoundingBoxes(min_size=1),
        ]
    )


def rtdetr_test_augmentation(size: int = 640) -> v2.Resize:
    """RT-DETR's test transform: resize to ``size x size`` (aspect ratio not kept).

    Args:
        size: Square side.

    Returns:
        A v2 transform of ``{"image"}`` dicts (or bare images).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return v2.Resize((size, size))


class MultiScaleCollate:
    """Resize all images of a batch to one square size drawn from ``scales``, before
    ``stop_epoch``; the batch unchanged (its ``base_size`` images) after.

    The epoch is the samples' ``"epoch"``, which :class:`~sqr.data.build.MapDataset` records
    from the training sampler's keys (one epoch per batch).

    Images are resized with nearest-neighbour interpolation, as RT-DETR's
    ``BatchImageCollateFunction`` does (``F.interpolate``'s default mode); boxes are scaled with
    them, and ``height``/``width`` become the new size.

    The size is drawn from a hash of ``(seed, epoch, the batch's image ids)`` rather than from a
    stateful generator, so a batch gets the same size whichever loader worker collates it and
    after a resume.

    Args:
        scales: Candidate sizes (repeats weight a size); RT-DETR's by default.
        stop_epoch: First epoch (0-based) without multi-scale.
        seed: Seed of the size draws.
    """

    def __init__(
        self, scales: Sequence[int] = RTDETR_SCALES, stop_epoch: int = 71, seed: int = 0
    ) -> None:
        scales = list(scales)
        if not scales or any(int(s) != s or s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive integers, got {scales}")
        if stop_epoch < 0:
            raise ValueError(f"stop_epoch must be non-negative, got {stop_epoch}")
        self.scales = [int(s) for s in scales]
        self.stop_epoch = int(stop_epoch)
        self.seed = int(seed)

    @staticmethod
    def batch_epoch(batch: Sequence[dict[str, Any]]) -> int:
        """The epoch of a batch: its samples' ``"epoch"``.

        Raises:
            ValueError: A sample has no epoch (it did not come from the training sampler), or
                the samples disagree.
        """
        epochs = {x.get("epoch") for x in batch}
        if None in epochs or len(epochs) != 1:
            ids = [x.get("image_id") for x in batch]
            raise ValueError(
                f"MultiScaleCollate needs one 'epoch' in every sample of a batch (MapDataset "
                f"records it from the training sampler's keys); images {ids} have {epochs}"
            )
        (epoch,) = epochs
        return int(epoch)

    def draw_size(self, batch: Sequence[dict[str, Any]]) -> int:
        """The size of this batch before ``stop_epoch``: one of :attr:`scales`.

        Args:
            batch: Mapped samples (their ``"image_id"`` and ``"epoch"`` keys are read).
        """
        ids = [x["image_id"] for x in batch]
        key = repr((self.seed, self.batch_epoch(batch), ids)).encode()
        digest = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        return self.scales[digest % len(self.scales)]

    def __call__(self, batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Collate mapped samples.

        Args:
            batch: :class:`~sqr.data.mapper.DetrDatasetMapper` outputs: "image" uint8
                Tensor[3, H, W], "height", "width", "targets" {"boxes" [N, 4] XYXY pixels,
                "labels" [N]}, and the "epoch" :class:`~sqr.data.build.MapDataset` adds.

        Returns:
            The samples as a list; before ``stop_epoch`` new dicts with images
            [3, S, S], boxes scaled to them and ``height = width = S``.
        """
        batch = list(batch)
        if not batch or self.batch_epoch(batch) >= self.stop_epoch:
            return batch
        size = self.draw_size(batch)
        return [_resize_sample(sample, size) for sample in batch]

    def __repr__(self) -> str:
        return (
            f"MultiScaleCollate(scales={self.scales}, stop_epoch={self.stop_epoch}, "
            f"seed={self.seed})"
        )


def _resize_sample(sample: dict[str, Any], size: int) -> dict[str, Any]:
    """One mapped training sample resized to ``size x size`` (nearest), its boxes with it."""
    image = sample["image"]
    height, width = int(image.shape[-2]), int(image.shape[-1])
    resized = nn.functional.interpolate(image[None], size=(size, size), mode="nearest")[0]
    out = {**sample, "image": resized, "height": size, "width": size}
    if "targets" in sample:
        scale = torch.tensor([size / width, size / height] * 2, dtype=torch.float32)
        targets = sample["targets"]
        out["targets"] = {**targets, "boxes": targets["boxes"] * scale}
    return out
