"""The training loader's epoch reaches RT-DETR's stop-epoch policy in the loader workers: the
strong augmentation and the multi-scale collate run in the epochs before ``stop_epoch`` and not
after, with workers as without, and a resumed loader starts in the epoch of its iteration."""

from __future__ import annotations

import pytest
import torch
from PIL import Image as PILImage

from sqr.data import DetrDatasetMapper, build_detection_train_loader
from sqr.data.rtdetr import MultiScaleCollate, rtdetr_train_augmentation

BACKGROUND = (90, 90, 90)
OBJECT = (230, 40, 40)
HEIGHT, WIDTH = 24, 32
OBJECT_BOX = (8, 6, 24, 18)
BASE_SIZE = 40  # the mapper's square resize
SCALES = [48, 56]  # the collate's sizes: never the base size
RECORDS, BATCH = 4, 2  # two iterations per epoch
STOP_EPOCH = 1


def write_records(tmp_path) -> list[dict]:
    image = torch.tensor(BACKGROUND, dtype=torch.uint8)[:, None, None].repeat(1, HEIGHT, WIDTH)
    x0, y0, x1, y1 = OBJECT_BOX
    image[:, y0:y1, x0:x1] = torch.tensor(OBJECT, dtype=torch.uint8)[:, None, None]
    records = []
    for i in range(RECORDS):
        path = tmp_path / f"{i}.png"
        PILImage.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        records.append(
            {
                "file_name": str(path),
                "image_id": i,
                "height": HEIGHT,
                "width": WIDTH,
                "annotations": [{"bbox": list(OBJECT_BOX), "category_id": 3, "iscrowd": 0}],
            }
        )
    return records


def rtdetr_loader(records: list[dict], num_workers: int, start_iter: int = 0):
    loader = build_detection_train_loader(
        records,
        DetrDatasetMapper(
            rtdetr_train_augmentation(size=BASE_SIZE, stop_epoch=STOP_EPOCH), is_train=True
        ),
        total_batch_size=BATCH,
        num_workers=num_workers,
        seed=0,
        pin_memory=False,
        collate_fn=MultiScaleCollate(SCALES, stop_epoch=STOP_EPOCH, seed=0),
    )
    loader.batch_sampler.start_iter = start_iter
    return loader


def take(loader, count: int) -> list[list[dict]]:
    batches = iter(loader)
    try:
        return [next(batches) for _ in range(count)]
    finally:
        del batches  # stops the workers


def is_plain(sample: dict) -> bool:
    """Whether a sample shows no strong op: the background corners and the object's colour are
    those of the record (the flip and the resize keep both; the photometric distortion
    recolours the object, the zoom-out puts black corners around the image)."""
    image = sample["image"]
    corners = [image[:, y, x].tolist() for y in (0, -1) for x in (0, -1)]
    cx, cy = ((sample["targets"]["boxes"][0, :2] + sample["targets"]["boxes"][0, 2:]) / 2).long()
    return corners == [list(BACKGROUND)] * 4 and image[:, cy, cx].tolist() == list(OBJECT)


@pytest.mark.timeout(120)
def test_workers_apply_the_strong_ops_and_multi_scale_before_stop_epoch_only(tmp_path):
    batches = take(rtdetr_loader(write_records(tmp_path), num_workers=2), 6)
    epochs = [iteration * BATCH // RECORDS for iteration in range(6)]
    assert epochs == [0, 0, 1, 1, 2, 2]
    for epoch, batch in zip(epochs, batches, strict=True):
        sizes = {tuple(x["image"].shape) for x in batch}
        assert len(sizes) == 1, sizes
        (size,) = {x["height"] for x in batch}
        if epoch < STOP_EPOCH:
            assert size in SCALES, (epoch, size)
        else:
            assert size == BASE_SIZE, (epoch, size)
            assert all(is_plain(x) for x in batch), epoch
    # The strong ops did run in epoch 0 (their draws are seeded per sample: fixed outcome).
    assert not all(is_plain(x) for batch in batches[:2] for x in batch)


@pytest.mark.timeout(120)
def test_workers_give_the_batches_of_the_main_process(tmp_path):
    records = write_records(tmp_path)
    in_process = take(rtdetr_loader(records, num_workers=0), 6)
    in_workers = take(rtdetr_loader(records, num_workers=2), 6)
    for a, b in zip(in_process, in_workers, strict=True):
        assert [x["image_id"] for x in a] == [x["image_id"] for x in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["targets"]["boxes"], y["targets"]["boxes"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_iter", [1, 2, 3])
def test_a_resumed_loader_starts_in_the_epoch_of_its_iteration(tmp_path, start_iter):
    records = write_records(tmp_path)
    (resumed,) = take(rtdetr_loader(records, num_workers=2, start_iter=start_iter), 1)
    uninterrupted = take(rtdetr_loader(records, num_workers=0), start_iter + 1)[-1]
    epoch = start_iter * BATCH // RECORDS
    assert (resumed[0]["height"] in SCALES) == (epoch < STOP_EPOCH)
    for x, y in zip(resumed, uninterrupted, strict=True):
        assert x["image_id"] == y["image_id"]
        assert torch.equal(x["image"], y["image"])
