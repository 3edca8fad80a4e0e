"""Tests for sqr.data.batching."""

from __future__ import annotations

import pytest
import torch

from sqr.data.batching import batch_images


def test_pads_to_max_size_with_mask():
    a = torch.full((3, 4, 6), 5, dtype=torch.uint8)
    b = torch.full((3, 7, 2), 9, dtype=torch.uint8)
    batch, mask = batch_images([a, b])
    # Max height 7 (from b), max width 6 (from a).
    assert batch.shape == (2, 3, 7, 6) and batch.dtype == torch.uint8
    assert mask.shape == (2, 7, 6) and mask.dtype == torch.bool
    assert torch.equal(batch[0, :, :4, :6], a) and torch.equal(batch[1, :, :7, :2], b)
    # Padding (bottom rows of a, right columns of b) holds the pad value 0 and is masked.
    assert int(batch[0, :, 4:].abs().sum()) == 0 and int(batch[1, :, :, 2:].abs().sum()) == 0
    assert not mask[0, :4, :6].any() and mask[0, 4:].all()
    assert not mask[1, :, :2].any() and mask[1, :, 2:].all()
    # a: 24 valid of 42 pixels -> 18 padded; b: 14 valid -> 28 padded.
    assert mask.sum(dim=(1, 2)).tolist() == [18, 28]


def test_size_divisibility_rounds_up():
    images = [torch.rand(3, 33, 20), torch.rand(3, 10, 31)]
    batch, mask = batch_images(images, size_divisibility=32, pad_value=-1.0)
    # max H 33 -> 64, max W 31 -> 32.
    assert batch.shape == (2, 3, 64, 32) and mask.shape == (2, 64, 32)
    assert batch.dtype == torch.float32
    assert (batch[0, :, 33:] == -1.0).all() and (batch[1, :, :, 31:] == -1.0).all()
    assert int((~mask[0]).sum()) == 33 * 20 and int((~mask[1]).sum()) == 10 * 31


def test_exact_multiple_is_not_padded_further():
    batch, mask = batch_images([torch.zeros(3, 32, 64)], size_divisibility=32)
    assert batch.shape == (1, 3, 32, 64) and not mask.any()


def test_same_size_images_need_no_padding():
    images = [torch.arange(12.0).reshape(3, 2, 2), torch.ones(3, 2, 2, dtype=torch.float32)]
    batch, mask = batch_images(images)
    assert torch.equal(batch, torch.stack(images)) and not mask.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.bool])
def test_any_dtype(dtype):
    batch, _ = batch_images([torch.ones(1, 2, 3, dtype=dtype), torch.ones(1, 3, 2, dtype=dtype)])
    assert batch.dtype == dtype and batch.shape == (2, 1, 3, 3)


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        batch_images([])
    with pytest.raises(ValueError, match="size_divisibility"):
        batch_images([torch.zeros(3, 2, 2)], size_divisibility=0)
    with pytest.raises(ValueError, match="channels"):
        batch_images([torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)])
    with pytest.raises(ValueError, match="shape"):
        batch_images([torch.zeros(2, 2)])
