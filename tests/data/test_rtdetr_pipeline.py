"""RT-DETR's data pipeline: each transform keeps a drawn box on its object, sanitize, the
stop-epoch policy, the multi-scale collate, the loader output and the recipe config."""

from __future__ import annotations

import pytest
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2

from sqr.config import LazyConfig, instantiate
from sqr.data import DetrDatasetMapper, build_detection_train_loader
from sqr.data.rtdetr import (
    RTDETR_SCALES,
    MultiScaleCollate,
    RandomApplyIoUCrop,
    UntilEpoch,
    rtdetr_test_augmentation,
    rtdetr_train_augmentation,
)

BACKGROUND = (90, 90, 90)
OBJECT = (230, 40, 40)
HEIGHT, WIDTH = 48, 64
OBJECT_BOX = (16, 12, 44, 36)  # x0, y0, x1, y1: the filled rectangle, in pixels
SEEDS = range(12)


def drawn_image(box=OBJECT_BOX) -> torch.Tensor:
    """uint8 [3, H, W]: a plain background with the object rectangle filled in."""
    image = torch.tensor(BACKGROUND, dtype=torch.uint8)[:, None, None].repeat(1, HEIGHT, WIDTH)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = torch.tensor(OBJECT, dtype=torch.uint8)[:, None, None]
    return image


def drawn_sample(extra_boxes=(), extra_labels=()) -> dict:
    boxes = torch.tensor([OBJECT_BOX, *extra_boxes], dtype=torch.float32)
    return {
        "image": tv_tensors.Image(drawn_image()),
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(HEIGHT, WIDTH)),
        "labels": torch.tensor([7, *extra_labels], dtype=torch.int64),
    }


def assert_box_on_object(image: torch.Tensor, box: torch.Tensor, colour, tol: int = 30) -> None:
    """The pixels whose centres lie inside ``box`` (1 pixel in from its edges, which resizing
    blurs) are almost all of ``colour``, and no pixel of ``colour`` lies more than 1.5 pixels
    outside it."""
    image = torch.as_tensor(image).int()
    is_object = (image - torch.tensor(colour).int()[:, None, None]).abs().amax(0) <= tol
    assert is_object.any(), "the object is not in the image"
    ys = torch.arange(image.shape[-2]).float()[:, None] + 0.5
    xs = torch.arange(image.shape[-1]).float()[None] + 0.5
    x0, y0, x1, y1 = (float(v) for v in box)
    inside = (xs >= x0 + 1) & (xs <= x1 - 1) & (ys >= y0 + 1) & (ys <= y1 - 1)
    near = (xs >= x0 - 1.5) & (xs <= x1 + 1.5) & (ys >= y0 - 1.5) & (ys <= y1 + 1.5)
    assert inside.any(), f"box {box.tolist()} holds no pixel centre"
    fraction = is_object[inside].float().mean().item()
    assert fraction >= 0.95, f"only {fraction:.2f} of box {box.tolist()} is the object"
    strays = int((is_object & ~near).sum())
    assert strays == 0, f"{strays} object pixels lie outside box {box.tolist()}"


def train_ops(size: int = 40) -> list:
    """The pipeline's own ops in order, each made to always fire."""
    pipeline = rtdetr_train_augmentation(size=size)
    ops = [*pipeline.transforms[0].transform.transforms, *pipeline.transforms[1:]]
    for op in ops:
        if hasattr(op, "p"):
            op.p = 1.0
    return ops


@pytest.mark.parametrize("position", range(7), ids=[type(op).__name__ for op in train_ops()])
def test_each_transform_keeps_the_box_on_the_object(position):
    op = train_ops()[position]
    kept = 0
    for seed in SEEDS:
        torch.manual_seed(seed)
        out = op(drawn_sample())
        if len(out["boxes"]) == 0:  # an IoU crop may leave the object out; sanitize drops it
            continue
        kept += 1
        assert out["labels"].tolist() == [7]
        assert tuple(out["boxes"].canvas_size) == tuple(out["image"].shape[-2:])
        # Photometric distortion changes the colours; everything else keeps them.
        colour = OBJECT
        if isinstance(op, v2.RandomPhotometricDistort):
            cx, cy = ((out["boxes"][0, :2] + out["boxes"][0, 2:]) / 2).long().tolist()
            colour = out["image"][:, cy, cx].tolist()
        assert_box_on_object(out["image"], out["boxes"][0], colour)
    assert kept >= len(SEEDS) // 2


def test_photometric_distort_changes_colours_and_zoom_out_fills_with_black():
    distort, zoom_out = train_ops()[:2]
    changed = 0
    for seed in SEEDS:
        torch.manual_seed(seed)
        changed += int(not torch.equal(distort(drawn_sample())["image"], drawn_image()))
        torch.manual_seed(seed)
        out = zoom_out(drawn_sample())["image"]
        if out.shape[-2:] != (HEIGHT, WIDTH):  # zoomed out: the canvas corners are the fill
            assert out[:, 0, 0].tolist() == [0, 0, 0] or out[:, -1, -1].tolist() == [0, 0, 0]
    assert changed >= len(SEEDS) // 2


@pytest.mark.parametrize("epoch", [0, 71])
def test_whole_pipeline_keeps_the_box_on_the_object(epoch):
    pipeline = rtdetr_train_augmentation(size=96, stop_epoch=71)
    pipeline.transforms[0].set_epoch(epoch)
    kept = 0
    for seed in range(24):
        torch.manual_seed(seed)
        out = pipeline(drawn_sample())
        assert out["image"].shape == (3, 96, 96)
        if len(out["boxes"]) == 0:
            continue
        kept += 1
        cx, cy = ((out["boxes"][0, :2] + out["boxes"][0, 2:]) / 2).long().tolist()
        colour = out["image"][:, cy, cx].tolist()  # the distortion may recolour the object
        assert_box_on_object(out["image"], out["boxes"][0], colour)
        if epoch >= 71:
            assert colour == list(OBJECT)
    assert kept >= 12


def test_sanitize_drops_degenerate_boxes_with_their_labels():
    extra = [(2, 2, 2.5, 30), (50, 40, 60, 40.5), (0, 0, 0, 0)]  # 0.5 px wide/high, empty
    sanitize = train_ops()[3]
    out = sanitize(drawn_sample(extra, [1, 2, 3]))
    assert out["labels"].tolist() == [7]
    assert out["boxes"].tolist() == [list(map(float, OBJECT_BOX))]
    # Through the whole pipeline too (after the stop epoch it is deterministic but the flip).
    pipeline = rtdetr_train_augmentation(size=64, stop_epoch=0)
    assert pipeline(drawn_sample(extra, [1, 2, 3]))["labels"].tolist() == [7]


def test_pipeline_has_rtdetr_ops_order_and_parameters():
    pipeline = rtdetr_train_augmentation()
    gate = pipeline.transforms[0]
    assert isinstance(gate, UntilEpoch) and gate.stop_epoch == 71
    distort, zoom_out, crop = gate.transform.transforms
    assert isinstance(distort, v2.RandomPhotometricDistort) and distort.p == 0.5
    assert isinstance(zoom_out, v2.RandomZoomOut) and zoom_out.p == 0.5
    assert zoom_out.fill == 0
    assert tuple(zoom_out.side_range) == (1.0, 4.0)
    assert isinstance(crop, RandomApplyIoUCrop) and crop.p == 0.8
    sanitize, flip, resize, sanitize_again = pipeline.transforms[1:]
    assert isinstance(sanitize, v2.SanitizeBoundingBoxes) and sanitize.min_size == 1
    assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(resize, v2.Resize) and list(resize.size) == [640, 640]
    assert isinstance(sanitize_again, v2.SanitizeBoundingBoxes) and sanitize_again.min_size == 1
    image = rtdetr_test_augmentation()(tv_tensors.Image(drawn_image()))
    assert image.shape == (3, 640, 640)


def test_iou_crop_runs_with_probability_p():
    # One coin draw, then v2.RandomIoUCrop's own draws: replayed by hand from the same seed.
    crop = RandomApplyIoUCrop(p=0.8)
    skipped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = crop(drawn_sample())
        torch.manual_seed(seed)
        if torch.rand(1).item() >= 0.8:
            expected = drawn_sample()
            skipped += 1
        else:
            expected = v2.RandomIoUCrop()(drawn_sample())
        assert torch.equal(out["image"], expected["image"]), seed
        assert torch.equal(out["boxes"], expected["boxes"]), seed
    assert 0 < skipped < 20
    with pytest.raises(ValueError, match="p=1.5"):
        RandomApplyIoUCrop(p=1.5)


def test_stop_epoch_switches_the_strong_ops_off_exactly_at_stop_epoch():
    pipeline = rtdetr_train_augmentation(size=48, stop_epoch=5)
    strong = pipeline.transforms[0].transform
    weak = v2.Compose(pipeline.transforms[1:])
    for epoch, uses_strong in [(4, True), (5, False), (9, False)]:
        pipeline.transforms[0].set_epoch(epoch)
        differs = 0
        for seed in range(6):
            torch.manual_seed(seed)
            out = pipeline(drawn_sample())
            torch.manual_seed(seed)
            expected = weak(strong(drawn_sample()) if uses_strong else drawn_sample())
            assert torch.equal(out["image"], expected["image"]), (epoch, seed)
            assert torch.equal(out["boxes"], expected["boxes"]), (epoch, seed)
            torch.manual_seed(seed)
            differs += int(not torch.equal(out["image"], weak(drawn_sample())["image"]))
        assert (differs > 0) == uses_strong, epoch


def batch_of(ids, size=64, epoch=0) -> list[dict]:
    """Training samples as the loader's dataset gives them: the drawn object resized to
    size x size, with the epoch of their iteration."""
    image = v2.functional.resize(drawn_image(), [size, size])
    scale = torch.tensor([size / WIDTH, size / HEIGHT] * 2)
    boxes = torch.tensor([OBJECT_BOX], dtype=torch.float32) * scale
    return [
        {
            "image": image.clone(),
            "image_id": i,
            "file_name": f"{i}.png",
            "height": size,
            "width": size,
            "targets": {"boxes": boxes.clone(), "labels": torch.tensor([7])},
            "epoch": epoch,
        }
        for i in ids
    ]


def test_collate_draws_one_size_per_batch_from_the_list():
    scales = [32, 48, 48, 80]
    collate = MultiScaleCollate(scales, stop_epoch=3, seed=0)
    sizes = []
    for b in range(30):
        out = collate(batch_of(range(4 * b, 4 * b + 4)))
        batch_sizes = {tuple(x["image"].shape) for x in out}
        assert len(batch_sizes) == 1
        (shape,) = batch_sizes
        assert shape[0] == 3 and shape[1] == shape[2] and shape[1] in scales
        assert all(x["height"] == x["width"] == shape[1] for x in out)
        assert all(x["image"].dtype == torch.uint8 for x in out)
        assert_box_on_object(out[0]["image"], out[0]["targets"]["boxes"][0], OBJECT)
        sizes.append(shape[1])
    assert set(sizes) == {32, 48, 80}
    # Reproducible from the seed; another seed draws other sizes.
    again = MultiScaleCollate(scales, stop_epoch=3, seed=0)
    assert [again(batch_of(range(4 * b, 4 * b + 4)))[0]["height"] for b in range(30)] == sizes
    other = MultiScaleCollate(scales, stop_epoch=3, seed=1)
    assert [other(batch_of(range(4 * b, 4 * b + 4)))[0]["height"] for b in range(30)] != sizes


def test_collate_keeps_the_base_size_from_stop_epoch_on():
    collate = MultiScaleCollate([32, 80], stop_epoch=3, seed=0)
    for epoch, multi_scale in [(2, True), (3, False), (7, False)]:
        batches = [batch_of(range(4 * b, 4 * b + 4), epoch=epoch) for b in range(10)]
        sizes = {collate(batch)[0]["height"] for batch in batches}
        assert (sizes != {64}) == multi_scale, (epoch, sizes)
    batch = batch_of(range(4), epoch=3)
    out = collate(batch)
    assert all(a["image"] is b["image"] for a, b in zip(out, batch, strict=True))


def test_collate_refuses_samples_without_one_epoch():
    collate = MultiScaleCollate([32, 80], stop_epoch=3, seed=0)
    batch = batch_of(range(2))
    del batch[1]["epoch"]
    with pytest.raises(ValueError, match=r"'epoch'.*images \[0, 1\]"):
        collate(batch)
    with pytest.raises(ValueError, match="'epoch'"):
        collate(batch_of([0], epoch=2) + batch_of([1], epoch=3))


def test_rtdetr_scales():
    assert list(RTDETR_SCALES) == [*range(480, 609, 32), 640, 640, *range(640, 801, 32)]
    assert MultiScaleCollate().scales == list(RTDETR_SCALES)


def write_records(tmp_path, count: int) -> list[dict]:
    records = []
    for i in range(count):
        path = tmp_path / f"{i}.png"
        PILImage.fromarray(drawn_image().permute(1, 2, 0).numpy()).save(path)
        records.append(
            {
                "file_name": str(path),
                "image_id": i,
                "height": HEIGHT,
                "width": WIDTH,
                "annotations": [{"bbox": list(OBJECT_BOX), "category_id": 7, "iscrowd": 0}],
            }
        )
    return records


def test_loader_output_is_the_model_input_and_the_policy_stops_at_stop_epoch(tmp_path):
    # 6 records, batch 3: iterations 0-3 are epochs 0 and 1, iteration 4 starts epoch 2.
    loader = build_detection_train_loader(
        write_records(tmp_path, 6),
        DetrDatasetMapper(rtdetr_train_augmentation(size=64, stop_epoch=2), is_train=True),
        total_batch_size=3,
        seed=0,
        collate_fn=MultiScaleCollate([32, 48, 80], stop_epoch=2, seed=0),
    )
    batches = iter(loader)
    sizes = set()
    for iteration in range(4):
        batch = next(batches)
        assert len({x["image"].shape for x in batch}) == 1
        for x in batch:
            assert x["image"].dtype == torch.uint8 and x["image"].shape[0] == 3
            assert (x["height"], x["width"]) == tuple(x["image"].shape[-2:])
            assert x["targets"]["boxes"].dtype == torch.float32
            assert x["targets"]["boxes"].shape == (len(x["targets"]["labels"]), 4)
            assert x["targets"]["labels"].dtype == torch.int64
            assert x["epoch"] == iteration // 2
        sizes.add(batch[0]["height"])
    assert sizes <= {32, 48, 80} and len(sizes) > 1
    for iteration in range(4, 8):
        for x in next(batches):
            assert x["epoch"] == iteration // 2
            assert x["image"].shape == (3, 64, 64)
            assert x["targets"]["labels"].tolist() == [7]
            assert_box_on_object(x["image"], x["targets"]["boxes"][0], OBJECT)


def test_recipe_config():
    cfg = LazyConfig.load("configs/common/data/coco_rtdetr.py")
    cfg.train = {"seed": 3}  # the seeds interpolate train.seed
    train = cfg.dataloader.train
    assert train.total_batch_size == 16
    assert train.mapper.augmentation.stop_epoch == 71 and train.collate_fn.stop_epoch == 71
    collate = instantiate(train.collate_fn)
    assert collate.scales == list(RTDETR_SCALES) and collate.stop_epoch == 71
    assert collate.seed == 3
    pipeline = instantiate(train.mapper.augmentation)
    assert pipeline.transforms[0].stop_epoch == 71
    assert list(pipeline.transforms[3].size) == [640, 640]
    assert list(instantiate(cfg.dataloader.test.mapper.augmentation).size) == [640, 640]


def test_test_mapper_resizes_to_the_square_and_keeps_the_record_size(tmp_path):
    (record,) = write_records(tmp_path, 1)
    out = DetrDatasetMapper(rtdetr_test_augmentation(size=80), is_train=False)(record)
    assert out["image"].shape == (3, 80, 80) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (HEIGHT, WIDTH)  # predictions come back in these
    assert "targets" not in out
