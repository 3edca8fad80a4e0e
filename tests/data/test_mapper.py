"""Tests for sqr.data.mapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from sqr.data.mapper import (
    DetrDatasetMapper,
    ImageReadError,
    ImageSizeMismatchError,
    read_image,
)
from sqr.data.transforms import detr_test_augmentation


def identity(sample: dict) -> dict:
    return sample


@pytest.fixture
def image_record(tmp_path: Path) -> dict:
    """A 40x60 (H x W) PNG whose pixel (y, x) has red = x, green = y, blue = 7."""
    ys, xs = np.mgrid[0:40, 0:60]
    pixels = np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(pixels).save(path)
    return {
        "file_name": str(path),
        "image_id": 11,
        "height": 40,
        "width": 60,
        "annotations": [
            {"bbox": [10.0, 5.0, 30.0, 25.0], "category_id": 2, "iscrowd": 0},
            {"bbox": [0.0, 0.0, 60.0, 40.0], "category_id": 0, "iscrowd": 1},
            # Pokes out of the image on the left: clipped to [0, 20, 15, 35] by the mapper.
            {"bbox": [-5.0, 20.0, 15.0, 35.0], "category_id": 1, "iscrowd": 0},
        ],
    }


def test_train_output_contract(image_record):
    out = DetrDatasetMapper(identity, is_train=True)(image_record)
    assert set(out) == {"image", "height", "width", "image_id", "file_name", "targets"}
    image = out["image"]
    assert type(image) is torch.Tensor and image.dtype == torch.uint8
    assert tuple(image.shape) == (3, 40, 60)
    # Channel 0 encodes x, channel 1 encodes y, channel 2 is constant 7: RGB order preserved.
    assert image[0, 3, 17] == 17 and image[1, 3, 17] == 3 and image[2, 3, 17] == 7
    assert (out["height"], out["width"]) == (40, 60)
    assert out["image_id"] == 11 and out["file_name"] == image_record["file_name"]

    targets = out["targets"]
    assert type(targets["boxes"]) is torch.Tensor
    assert targets["boxes"].dtype == torch.float32 and targets["labels"].dtype == torch.int64
    # The crowd box is dropped in training; the out-of-bounds box is clipped at x = 0.
    torch.testing.assert_close(
        targets["boxes"], torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 20.0, 15.0, 35.0]])
    )
    assert targets["labels"].tolist() == [2, 1]


def test_train_boxes_in_augmented_coordinates(image_record):
    # Flip then halve: x -> (60 - x) / 2, y -> y / 2; output is 20x30 (H x W).
    aug = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((20, 30))])
    out = DetrDatasetMapper(aug, is_train=True)(image_record)
    assert tuple(out["image"].shape) == (3, 20, 30)
    assert (out["height"], out["width"]) == (20, 30)
    # [10, 5, 30, 25] -> flip [30, 5, 50, 25] -> halve [15, 2.5, 25, 12.5]
    # [0, 20, 15, 35] -> flip [45, 20, 60, 35] -> halve [22.5, 10, 30, 17.5]
    torch.testing.assert_close(
        out["targets"]["boxes"],
        torch.tensor([[15.0, 2.5, 25.0, 12.5], [22.5, 10.0, 30.0, 17.5]]),
    )
    assert out["targets"]["labels"].tolist() == [2, 1]


def test_test_mode_keeps_original_size(image_record):
    # Short side 40 -> 20 gives a 20x30 image, but height/width report the original 40x60.
    out = DetrDatasetMapper(detr_test_augmentation(20, 1000), is_train=False)(image_record)
    assert tuple(out["image"].shape) == (3, 20, 30) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (40, 60)
    assert "targets" not in out


def test_record_without_annotations(image_record):
    record = {k: v for k, v in image_record.items() if k != "annotations"}
    out = DetrDatasetMapper(identity, is_train=True)(record)
    assert out["targets"]["boxes"].shape == (0, 4) and out["targets"]["labels"].shape == (0,)


def test_grayscale_image_converted_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 12), 99, dtype=np.uint8), mode="L").save(path)
    record = {"file_name": str(path), "image_id": 0, "height": 8, "width": 12, "annotations": []}
    out = DetrDatasetMapper(identity, is_train=False)(record)
    assert tuple(out["image"].shape) == (3, 8, 12) and int(out["image"].min()) == 99


def test_16_bit_png_scaled_to_8_bits(tmp_path):
    # 65535 = 255 * 257, so an exact 16-bit value v maps to v / 257: 65535 -> 255,
    # 32896 -> 128, 257 -> 1; 128 / 257 = 0.498 rounds to 0 and 129 / 257 = 0.502 to 1.
    pixels = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "gradient16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == "I;16"  # the decoder keeps all 16 bits
    image = read_image(str(path))
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 1, 6)
    # Grayscale is replicated into all three channels.
    assert image.tolist() == [[[0, 0, 1, 1, 128, 255]]] * 3


def test_16_bit_big_endian_scaled_to_8_bits(tmp_path):
    # TIFF keeps the byte order, so this opens as "I;16B", which numpy reads as ">u2".
    path = tmp_path / "big_endian.tiff"
    Image.frombytes("I;16B", (3, 1), np.array([0, 32896, 65535], ">u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16B"
    assert read_image(str(path)).tolist() == [[[0, 128, 255]]] * 3


def test_32_bit_int_image_scaled(tmp_path):
    # Mode "I" whose values fit 16 bits is read as 16-bit: 32896 -> 128 as above.
    fits = tmp_path / "fits16.tiff"
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32)).save(fits)
    assert Image.open(fits).mode == "I"
    assert read_image(str(fits)).tolist() == [[[0, 128, 255]]] * 3
    # Beyond 16 bits the int32 range is used: v * 255 / (2**31 - 1), so 2**30 -> 127.50000006
    # -> 128 and 2**24 -> 1.99 -> 2.
    wide = tmp_path / "wide.tiff"
    Image.fromarray(np.array([[0, 2**24, 2**30, 2**31 - 1]], dtype=np.int32)).save(wide)
    assert read_image(str(wide)).tolist() == [[[0, 2, 128, 255]]] * 3


def test_32_bit_int_image_with_negative_values_is_refused(tmp_path):
    path = tmp_path / "negative.tiff"
    Image.fromarray(np.array([[-5, 3]], dtype=np.int32)).save(path)
    with pytest.raises(ImageReadError, match=r"negative\.tiff.*-5"):
        read_image(str(path))


def test_float_image_scaled(tmp_path):
    # max <= 1: read as [0, 1] intensities, so 0.5 -> 127.5 -> 128 and 0.25 -> 63.75 -> 64.
    unit = tmp_path / "unit.tiff"
    Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)).save(unit)
    assert Image.open(unit).mode == "F"
    assert read_image(str(unit)).tolist() == [[[0, 64, 128, 255]]] * 3
    # max > 1: read as 0..255 intensities, rounded and clipped: -3 -> 0, 99.6 -> 100, 300 -> 255.
    wide = tmp_path / "wide.tiff"
    Image.fromarray(np.array([[-3.0, 99.6, 300.0]], dtype=np.float32)).save(wide)
    assert read_image(str(wide)).tolist() == [[[0, 100, 255]]] * 3


def test_float_image_with_nan_is_refused(tmp_path):
    path = tmp_path / "nan.tiff"
    Image.fromarray(np.array([[0.5, np.nan]], dtype=np.float32)).save(path)
    with pytest.raises(ImageReadError, match=r"nan\.tiff.*non-finite"):
        read_image(str(path))


def test_truncated_16_bit_png_names_file(tmp_path):
    path = tmp_path / "cut16.png"
    Image.fromarray((np.arange(64 * 64) * 7 % 65536).astype(np.uint16).reshape(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=r"cut16\.png"):
        read_image(str(path))


def test_unreadable_image_names_file(tmp_path, image_record):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    record = dict(image_record, file_name=str(bad))
    with pytest.raises(ImageReadError, match="broken.jpg"):
        DetrDatasetMapper(identity, is_train=True)(record)
    # ImageReadError is an OSError, so generic handlers still catch it.
    assert issubclass(ImageReadError, OSError)


def test_missing_image_names_file(tmp_path, image_record):
    record = dict(image_record, file_name=str(tmp_path / "nope.png"))
    with pytest.raises(OSError, match="nope.png"):
        DetrDatasetMapper(identity, is_train=False)(record)


def test_size_mismatch_names_file_and_sizes(image_record):
    record = dict(image_record, height=41)
    with pytest.raises(ImageSizeMismatchError, match=r"img\.png.*40 x 60.*41 x 60"):
        DetrDatasetMapper(identity, is_train=True)(record)
