"""AdaMixer with SQR: group batching against a per-group oracle, and the detector contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import detectors
from helpers.tiny import TINY_ADAMIXER

from sqr.layers.adamixer_ops import xyzr_to_xyxy
from sqr.layers.box_ops import box_xyxy_to_cxcywh

CONFIG = Path(__file__).resolve().parents[2] / "projects/sqr/configs/sqr_adamixer_r50_1x.py"


def build(mode: str = "selective", *extra: str) -> torch.nn.Module:
    return detectors.build_detector(
        CONFIG, [*TINY_ADAMIXER, f"model.recollection.mode={mode}", *extra]
    )


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move every decoder parameter off its initial value: at init the box deltas and the
    generated sampling offsets are zero, so every group would keep the whole-image boxes and
    a group mixed up with another would go unnoticed."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


SIZES = [(64, 80), (72, 64), (40, 96)]  # images of different sizes: padding differs per image


def batch(size: int = 2, with_empty: bool = True) -> list[dict]:
    second = detectors.NO_OBJECT if with_empty else ([[5.0, 5.0, 30.0, 25.0]], [3])
    return detectors.detection_batch(
        SIZES[:size], [detectors.TWO_OBJECTS, second, detectors.ONE_OBJECT][:size]
    )


def oracle_decode(decoder, content, xyzr, *features, schedule):
    """The schedule run one group at a time with the same stages, as the reference's plain
    SQR decoder does: a Python loop over groups, each with its own xyzr."""
    contents, boxes = [content], [xyzr]
    logits, predicted = [], []
    for stage in range(schedule.num_stages):
        for source in schedule.sources(stage):
            out, group_logits, new_xyzr = decoder.layers[stage](
                contents[source], boxes[source], features, 1
            )
            logits.append(group_logits)
            predicted.append(xyzr_to_xyxy(new_xyzr))
            contents.append(out)
            boxes.append(new_xyzr.detach())
    return torch.stack(logits), torch.stack(predicted)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("mode", ["selective", "dense"])
def test_batched_groups_equal_per_group_oracle(mode: str, batch_size: int) -> None:
    model = perturb(build(mode))
    inputs = batch(batch_size)
    losses, args, kwargs, (logits, boxes) = detectors.train_capturing_decoder(model, inputs)
    oracle_logits, oracle_boxes = oracle_decode(model.decoder, *args, **kwargs)
    assert logits.shape[:2] == (model.recollection.num_groups, batch_size)
    # The groups of a stage really differ (else a mix-up could not show).
    assert not torch.allclose(boxes[1], boxes[2], atol=1e-3)
    torch.testing.assert_close(logits, oracle_logits, rtol=1e-5, atol=1e-5)
    # Boxes are in pixels and refined through six stages, where rounding differences of the
    # batched matrix products grow: 1e-3 pixels is far below what a mixed-up group would give.
    torch.testing.assert_close(boxes, oracle_boxes, rtol=1e-4, atol=1e-3)

    # Losses from the oracle's predictions, normalised by each image's own size.
    whwh = torch.tensor([[w, h, w, h] for h, w in SIZES[:batch_size]], dtype=torch.float32)
    normalised = box_xyxy_to_cxcywh(oracle_boxes / whwh[:, None])
    oracle_losses = detectors.criterion_losses(model, oracle_logits, normalised, inputs)
    assert losses.keys() == oracle_losses.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], oracle_losses[key], rtol=1e-5, atol=1e-5, msg=key)


def test_first_stage_starts_from_each_whole_image() -> None:
    model = build("none").eval()
    content, xyzr = model.query_generator(torch.tensor([[64, 80], [72, 64]]))
    # Whole 80 x 64 image: centre (40, 32), z = log2(sqrt(80 * 64)), r = log2(64 / 80).
    torch.testing.assert_close(
        xyzr[0, 0], torch.tensor([40.0, 32.0, 0.5 * torch.tensor(5120.0).log2(), -0.321928])
    )
    # The content is layer-normalised without affine parameters: zero mean, unit variance.
    torch.testing.assert_close(content.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
    # The box branch starts at zero: stage 0 predicts each image's own whole extent, which is
    # (0.5, 0.5, 1, 1) once normalised by the image size, however much padding it got.
    with torch.no_grad():
        _, boxes, _ = model.predict(batch(3))
    torch.testing.assert_close(boxes[0], torch.tensor([0.5, 0.5, 1.0, 1.0]).expand(3, 10, 4))


def test_training_without_targets_raises() -> None:
    detectors.check_training_without_targets_raises(build(), batch())


def test_checkpointing_recollected_groups_changes_nothing() -> None:
    detectors.check_checkpointing_changes_nothing(
        perturb(build("selective")),
        build("selective", "model.decoder.checkpoint_recollected=True"),
        lambda: batch(2, with_empty=False),
    )


def test_inference_contract() -> None:
    model = build().eval()
    inputs = batch()
    inputs[0]["height"], inputs[0]["width"] = 128, 160  # report boxes at twice the input size
    with torch.no_grad():
        results = model(inputs)
        logits, boxes, schedule = model.predict(inputs)
    assert schedule.is_plain and logits.shape == (6, 2, 10, 5) and boxes.shape == (6, 2, 10, 4)
    first = results[0]
    # Top-k over the 10 x 5 query-class scores, k = num_queries; mmdet neither clips nor filters.
    assert first["boxes"].shape == (10, 4) and first["scores"].shape == first["labels"].shape
    assert first["labels"].max() < 5
    best = logits[-1, 0].sigmoid().flatten().max()
    torch.testing.assert_close(first["scores"][0], best)
    query = int(logits[-1, 0].sigmoid().flatten().argmax()) // 5
    cx, cy, w, h = boxes[-1, 0, query].tolist()
    expected = torch.tensor(
        [(cx - w / 2) * 160, (cy - h / 2) * 128, (cx + w / 2) * 160, (cy + h / 2) * 128]
    )
    torch.testing.assert_close(first["boxes"][0], expected)


def test_the_schedule_follows_the_decoder_depth() -> None:
    # One setting for any depth: the paper's rule on 4 stages gives 1, 2, 3, 5 groups.
    model = build("selective", "model.decoder.num_stages=4")
    assert model.recollection.groups_per_stage == (1, 2, 3, 5)
    assert model.plain_schedule.groups_per_stage == (1, 1, 1, 1)


def test_an_unknown_recollection_mode_is_named() -> None:
    with pytest.raises(ValueError, match="'sparse'"):
        build("sparse")


@pytest.mark.parametrize(
    ("key", "value"), [("num_queries", 0), ("num_queries", -3), ("num_classes", 0)]
)
def test_non_positive_counts_are_named(key: str, value: int) -> None:
    # The criterion keeps its 5 classes, so the detector's own check is what fires.
    with pytest.raises(ValueError, match=f"{key} must be a positive integer, got {value}"):
        build("none", "model.criterion.num_classes=5", f"model.{key}={value}")


def test_recipe_giou_eps_is_mmdet_s() -> None:
    # mmdet clamps pixel areas at 1e-6, which real boxes never reach: no eps on normalised boxes.
    criterion = build("none").criterion
    assert criterion.giou_eps == criterion.matcher.giou_eps == 0.0
