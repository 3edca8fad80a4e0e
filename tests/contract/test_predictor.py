"""Every detector of the table serves through :class:`sqr.engine.Predictor`: from its recipe
and a checkpoint, an image gives exactly the model's evaluation of the mapped image, in the
original image's pixels, and a batch gives what the images give one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from contract.models import CONFIGS, tiny_overrides
from torchvision import tv_tensors

from sqr.config import LazyConfig, instantiate
from sqr.engine import Predictor, ema_enabled
from sqr.modeling import table

# The recipes' test transform at a tiny size: short side 64, long side at most 96 (the DETR
# resize), or 64 x 64 (RT-DETR's square resize, which has a ``size``).
SMALL = [
    "dataloader.test.mapper.augmentation.short_size=64",
    "dataloader.test.mapper.augmentation.max_size=96",
]
SQUARE = ["dataloader.test.mapper.augmentation.size=64"]


@pytest.mark.parametrize("entry", table.DETECTORS, ids=lambda entry: entry.name)
def test_predictor_gives_the_models_evaluation(entry: table.DetectorEntry, tmp_path: Path) -> None:
    cfg = LazyConfig.load(str(CONFIGS / entry.config))
    square = "size" in cfg.dataloader.test.mapper.augmentation
    small = SQUARE if square else SMALL
    LazyConfig.apply_overrides(cfg, [*tiny_overrides(entry), *small, "train.device=cpu"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    weights = tmp_path / "model_final.pth"
    # As training saves it: with the moving average (here the same weights) where it has one.
    checkpoint = {"model": model.state_dict()}
    if ema_enabled(cfg):
        checkpoint["ema"] = {"module": model.state_dict(), "updates": 1}
    torch.save(checkpoint, weights)
    predictor = Predictor(cfg, str(weights), batch_size=2)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 45, 3), dtype=np.uint8) for _ in range(3)]
    one_by_one = [predictor(image) for image in images]
    batched = predictor(images)

    first = torch.from_numpy(images[0]).permute(2, 0, 1)
    resized = predictor.transform({"image": tv_tensors.Image(first)})["image"]
    assert resized.shape[-2:] == ((64, 64) if square else (64, 96))
    with torch.no_grad():
        (expected,) = model(
            [{"image": resized.as_subclass(torch.Tensor), "height": 30, "width": 45}]
        )
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(one_by_one[0][key], expected[key]), key
    assert len(one_by_one[0]["class_names"]) == len(expected["labels"])
    for one, many in zip(one_by_one, batched, strict=True):
        assert one["class_names"] == many["class_names"]
        torch.testing.assert_close(many["scores"], one["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many["boxes"], one["boxes"], rtol=1e-5, atol=1e-4)
