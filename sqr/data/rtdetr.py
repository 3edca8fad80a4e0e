"""RT-DETR's data pipeline: its augmentation, its multi-scale batch collate and its stop-epoch
policy (``rtdetrv2_pytorch`` ``configs/rtdetrv2/include/dataloader.yml``).

Training, per image (``torchvision.transforms.v2`` ops, in RT-DETR's order and parameters)::

    RandomPhotometricDistort(p=0.5) -> RandomZoomOut(fill=0) -> RandomIoUCrop (with p=0.8)
      -> SanitizeBoundingBoxes(min_size=1) -> RandomHorizontalFlip -> Resize(640x640)
      -> SanitizeBoundingBoxes(min_size=1)

The first three ("strong") ops run only while the epoch is below ``stop_epoch``
(:class:`UntilEpoch`); the batch collate (:class:`MultiScaleCollate`) resizes every image of a
batch to one size drawn from RT-DETR's scale list, also only before ``stop_epoch``. Both learn
the epoch through ``set_epoch(epoch)`` (:func:`set_loader_epoch` calls it on a loader's
transform and collate); the epoch of an iteration is :func:`epoch_at_iteration`. That reaches
in-process loading only: persistent loader workers keep the epoch their copies were made with
(RT-DETR re-creates its workers every epoch; here the infinite loader never does).

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
    "epoch_at_iteration",
    "rtdetr_test_augmentation",
    "rtdetr_train_augmentation",
    "set_loader_epoch",
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
    augmentation. The epoch starts at 0 and is set with :meth:`set_epoch`.

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
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Say which epoch (0-based) the next batches belong to."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def draw_size(self, batch: Sequence[dict[str, Any]]) -> int:
        """The size of this batch before ``stop_epoch``: one of :attr:`scales`.

        Args:
            batch: Mapped samples (their ``"image_id"`` keys are read).
        """
        key = repr((self.seed, self.epoch, [x["image_id"] for x in batch])).encode()
        digest = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        return self.scales[digest % len(self.scales)]

    def __call__(self, batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Collate mapped samples.

        Args:
            batch: :class:`~sqr.data.mapper.DetrDatasetMapper` outputs: "image" uint8
                Tensor[3, H, W], "height", "width", "targets" {"boxes" [N, 4] XYXY pixels,
                "labels" [N]}.

        Returns:
            The samples as a list; before ``stop_epoch`` new dicts with images
            [3, S, S], boxes scaled to them and ``height = width = S``.
        """
        batch = list(batch)
        if self.epoch >= self.stop_epoch or not batch:
            return batch
        size = self.draw_size(batch)
        return [_resize_sample(sample, size) for sample in batch]

    def __repr__(self) -> str:
        return (
            f"MultiScaleCollate(scales={self.scales}, stop_epoch={self.stop_epoch}, "
            f"seed={self.seed}, epoch={self.epoch})"
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


def epoch_at_iteration(iteration: int, dataset_size: int, total_batch_size: int) -> int:
    """The epoch of an iteration's first sample, as
    :class:`~sqr.data.samplers.TrainingBatchSampler` counts epochs (sample position
    ``iteration * total_batch_size`` over ``dataset_size`` records).

    Args:
        iteration: Global iteration (0-based).
        dataset_size: Number of training records.
        total_batch_size: Images per iteration over all ranks.
    """
    if iteration < 0 or dataset_size <= 0 or total_batch_size <= 0:
        raise ValueError(
            f"epoch_at_iteration needs iteration >= 0 and positive sizes, got {iteration=}, "
            f"{dataset_size=}, {total_batch_size=}"
        )
    return iteration * total_batch_size // dataset_size


def _epoch_aware(transform: Any) -> list[Any]:
    """``transform`` and the transforms inside it that have ``set_epoch``, each once.

    v2 containers (``Compose``, ``RandomChoice``) keep their transforms in a plain list, which
    ``nn.Module.modules()`` does not see, so both kinds of nesting are walked.
    """
    found: dict[int, Any] = {}
    seen: set[int] = set()
    stack = [transform]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if hasattr(item, "set_epoch"):
            found[id(item)] = item
        if isinstance(item, nn.Module):
            stack.extend(item.children())
        stack.extend(getattr(item, "transforms", None) or [])
    return list(found.values())


def set_loader_epoch(loader: torch.utils.data.DataLoader, epoch: int) -> int:
    """Call ``set_epoch(epoch)`` on a train loader's augmentation (every module of it that has
    one) and on its collate function.

    The epoch reaches the objects of this process only: loader workers hold their own copies,
    so a loader with workers is refused rather than left training with stale epochs.

    Args:
        loader: A :func:`~sqr.data.build.build_detection_train_loader` loader whose mapper
            has an ``augmentation``.
        epoch: The epoch (0-based) of the next batches.

    Returns:
        How many objects were told the epoch.

    Raises:
        ValueError: The loader has workers (``num_workers > 0``).
    """
    if loader.num_workers > 0:
        raise ValueError(
            f"set_loader_epoch cannot reach the transforms of a loader with num_workers="
            f"{loader.num_workers}: each worker holds its own copy (use num_workers=0, or "
            "have the samples carry their epoch)"
        )
    augmentation = getattr(getattr(loader.dataset, "mapper", None), "augmentation", None)
    targets = [*_epoch_aware(augmentation), *_epoch_aware(loader.collate_fn)]
    for target in targets:
        target.set_epoch(epoch)
    return len(targets)
