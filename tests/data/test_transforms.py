"""Tests for sqr.data.transforms."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sqr.data.transforms import (
    RandomSizeCrop,
    ResizeShortestEdge,
    detr_test_augmentation,
    detr_train_augmentation,
)


def make_sample(height: int, width: int, boxes: list[list[float]], labels: list[int]) -> dict:
    """Random uint8 image with XYXY boxes, in the dict layout the transforms expect."""
    gen = torch.Generator().manual_seed(height * 1000 + width)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    return {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(height, width),
        ),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_train_augmentation_flip_maps_boxes():
    # With every size equal to the image's short side (100) and a crop range larger than the
    # image, both branches are the identity, so the only randomness left is the flip.
    aug = detr_train_augmentation(
        min_sizes=[100], max_size=1000, crop_resize_sizes=[100], crop_size=(500, 600)
    )
    sample = make_sample(100, 200, [[10, 20, 50, 60]], [3])
    # Horizontal flip on a 200-wide image: x -> 200 - x, so [10, 20, 50, 60] -> [150, 20, 190, 60].
    flipped_box = torch.tensor([[150.0, 20.0, 190.0, 60.0]])
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = aug(sample)
        assert out["image"].shape == (3, 100, 200)
        assert out["labels"].tolist() == [3]
        if torch.equal(out["boxes"], sample["boxes"]):
            assert torch.equal(out["image"], sample["image"])
            seen.add("plain")
        else:
            torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), flipped_box)
            assert torch.equal(out["image"], sample["image"].flip(-1))
            seen.add("flipped")
    # p=0.5 over 20 seeds: both outcomes must show up.
    assert seen == {"plain", "flipped"}


def test_train_augmentation_short_side_in_list():
    # 60x90 image; the cap of 1000 never binds, so the short side is exactly a listed size and
    # the long side keeps the 1.5 aspect ratio (30 -> 45, 40 -> 60).
    aug = detr_train_augmentation(
        min_sizes=[30, 40], max_size=1000, crop_resize_sizes=[50], crop_size=(20, 40)
    )
    sample = make_sample(60, 90, [[0, 0, 60, 60]], [1])
    sizes = set()
    for seed in range(30):
        torch.manual_seed(seed)
        h, w = aug(sample)["image"].shape[-2:]
        assert min(h, w) in (30, 40)
        assert max(h, w) <= 1000
        sizes.add(min(h, w))
    assert sizes == {30, 40}


def test_train_augmentation_respects_max_size():
    # 60x120 image, min size 60, max 80: r = min(60/60, 80/120) = 2/3 -> 40x80; the cap binds,
    # so the long side is 80 and the short side 40 (not in min_sizes, by design).
    aug = detr_train_augmentation(
        min_sizes=[60], max_size=80, crop_resize_sizes=[60], crop_size=(200, 300)
    )
    sample = make_sample(60, 120, [[0, 0, 60, 30]], [0])
    for seed in range(10):
        torch.manual_seed(seed)
        out = aug(sample)
        assert tuple(out["image"].shape[-2:]) == (40, 80)
        assert max(out["image"].shape[-2:]) <= 80


def test_random_size_crop_sizes_in_range():
    crop = RandomSizeCrop(20, 50)
    sample = make_sample(100, 80, [[0, 0, 80, 100]], [0])
    for seed in range(50):
        torch.manual_seed(seed)
        out = crop(sample)
        h, w = out["image"].shape[-2:]
        assert 20 <= h <= 50 and 20 <= w <= 50
        assert out["boxes"].canvas_size == (h, w)


def test_random_size_crop_small_side_kept_whole():
    # The image is only 10 tall, below min_size=20, so the whole height is kept.
    crop = RandomSizeCrop(20, 50)
    sample = make_sample(10, 100, [[0, 0, 100, 10]], [0])
    for seed in range(10):
        torch.manual_seed(seed)
        h, w = crop(sample)["image"].shape[-2:]
        assert h == 10 and 20 <= w <= 50


def test_random_size_crop_then_sanitize_keeps_labels_aligned():
    crop = RandomSizeCrop(20, 50)
    pipeline = v2.Compose([crop, v2.SanitizeBoundingBoxes()])
    boxes = [[0, 0, 10, 10], [0, 0, 100, 100], [90, 90, 100, 100], [40, 40, 60, 60]]
    labels = [1, 2, 3, 4]
    sample = make_sample(100, 100, boxes, labels)
    kept_counts = set()
    for seed in range(40):
        # Re-draw the crop parameters from the same seed to compute the expected result.
        torch.manual_seed(seed)
        p = crop.make_params([sample["image"]])
        torch.manual_seed(seed)
        out = pipeline(sample)

        top, left, h, w = p["top"], p["left"], p["height"], p["width"]
        assert torch.equal(out["image"], sample["image"][:, top : top + h, left : left + w])
        # Expected: shift by the crop origin, clip to the crop, drop boxes under 1 px a side.
        shifted = torch.tensor(boxes, dtype=torch.float32) - torch.tensor([left, top, left, top])
        clipped = torch.stack(
            [
                shifted[:, 0].clamp(0, w),
                shifted[:, 1].clamp(0, h),
                shifted[:, 2].clamp(0, w),
                shifted[:, 3].clamp(0, h),
            ],
            dim=1,
        )
        keep = ((clipped[:, 2] - clipped[:, 0]) >= 1) & ((clipped[:, 3] - clipped[:, 1]) >= 1)
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), clipped[keep])
        assert out["labels"].tolist() == torch.tensor(labels)[keep].tolist()
        # The full-image box (label 2) always survives as the whole crop.
        assert 2 in out["labels"].tolist()
        kept_counts.add(int(keep.sum()))
    # Different crops must actually drop different numbers of boxes.
    assert len(kept_counts) > 1


def test_train_augmentation_handles_no_boxes():
    aug = detr_train_augmentation(
        min_sizes=[32], max_size=64, crop_resize_sizes=[40], crop_size=(16, 32)
    )
    sample = make_sample(48, 64, [], [])
    torch.manual_seed(0)
    out = aug(sample)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_resize_shortest_edge_hits_target_exactly():
    # 27x40 to short side 30: scale 30/27, so 27 -> 30 exactly and 40 -> 44.44 -> 44.
    # (Plain truncation of 27 * (30 / 27) gives 29 because of float error.)
    torch.manual_seed(0)
    out = ResizeShortestEdge([30])(make_sample(27, 40, [], [])["image"])
    assert tuple(out.shape) == (3, 30, 44)


def test_test_augmentation_size_and_boxes():
    # 100x200 (H x W), short 50, max 80: scaling the short side to 50 gives 50x100, whose long
    # side exceeds 80, so r = min(50/100, 80/200) = 0.4 -> 40x80. Boxes scale by 0.4.
    aug = detr_test_augmentation(short_size=50, max_size=80)
    sample = make_sample(100, 200, [[10, 20, 110, 70]], [5])
    out = aug(sample)
    assert tuple(out["image"].shape) == (3, 40, 80)
    torch.testing.assert_close(
        out["boxes"].as_subclass(torch.Tensor), torch.tensor([[4.0, 8.0, 44.0, 28.0]])
    )
    assert out["labels"].tolist() == [5]


def test_test_augmentation_no_cap():
    # 30x40 with short 60, max 1000: r = 2 -> 60x80.
    out = detr_test_augmentation(short_size=60, max_size=1000)(make_sample(30, 40, [], [])["image"])
    assert tuple(out.shape) == (3, 60, 80)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_sizes": []}, {"min_sizes": [0]}, {"crop_size": (5,)}, {"max_size": 0}],
)
def test_train_augmentation_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        detr_train_augmentation(**kwargs)


def test_random_size_crop_rejects_bad_range():
    with pytest.raises(ValueError, match="min_size=50"):
        RandomSizeCrop(50, 20)


def test_train_augmentation_without_crop_keeps_every_box():
    # crop_size=None leaves flip + multi-scale resize only: nothing is cut away, so every box
    # and label survives and the aspect ratio is kept (60x90 -> short side 30 or 40).
    aug = detr_train_augmentation(min_sizes=[30, 40], max_size=1000, crop_size=None)
    sample = make_sample(60, 90, [[0, 0, 10, 10], [80, 50, 90, 60]], [1, 2])
    for seed in range(20):
        torch.manual_seed(seed)
        out = aug(sample)
        h, w = out["image"].shape[-2:]
        assert min(h, w) in (30, 40) and w * 60 == h * 90
        assert out["labels"].tolist() == [1, 2]


@pytest.mark.parametrize(("height", "width"), [(0, 0), (0, 40), (27, 0)])
def test_resize_shortest_edge_names_an_empty_image(height: int, width: int) -> None:
    with pytest.raises(ValueError, match=rf"an image of {height} x {width} pixels"):
        ResizeShortestEdge([30])(tv_tensors.Image(torch.zeros(3, height, width, dtype=torch.uint8)))
