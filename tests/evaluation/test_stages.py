"""Per-stage predictions of a detector in eval mode, on the tiny DAB-DETR."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import TINY_DAB_DETR

from sqr.config import LazyConfig, instantiate
from sqr.evaluation.stages import predict_stages, query_predictions, stage_predictions
from sqr.modeling import table
from sqr.modeling.sqr import RecollectionSchedule

CONFIGS = Path(__file__).resolve().parents[2] / "projects/sqr/configs"
CONFIG = CONFIGS / "sqr_dab_detr_r50_50ep.py"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    cfg = LazyConfig.load(str(CONFIG))
    LazyConfig.apply_overrides(cfg, TINY_DAB_DETR)  # SQR on: 32 groups in training
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def batch() -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    images = [
        torch.randint(0, 256, (3, 64, 80), generator=gen, dtype=torch.uint8),
        torch.randint(0, 256, (3, 48, 64), generator=gen, dtype=torch.uint8),
    ]
    # Outputs are reported at twice the input size, as for a test image resized by the mapper.
    return [{"image": im, "height": 2 * im.shape[1], "width": 2 * im.shape[2]} for im in images]


def test_one_output_per_stage_and_the_last_is_the_eval_output(model) -> None:
    inputs = batch()
    with torch.no_grad():
        before = model(inputs)
    stages = stage_predictions(model, inputs)
    with torch.no_grad():
        after = model(inputs)
    assert len(stages) == model.decoder.num_stages == 6
    assert all(len(per_image) == len(inputs) for per_image in stages)
    for final, normal, again in zip(stages[-1], before, after, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(final[key], normal[key]), key
            assert torch.equal(again[key], normal[key]), key  # eval output unchanged
    # Earlier stages differ from the final one (different decoder layers and box refinements).
    assert not torch.equal(stages[0][0]["boxes"], stages[-1][0]["boxes"])


def test_training_mode_is_refused(model) -> None:
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            stage_predictions(model, batch())
    finally:
        model.eval()


def test_a_non_plain_schedule_is_refused() -> None:
    class Recollecting(torch.nn.Module):
        def predict(self, batched_inputs):
            schedule = RecollectionSchedule(2, mode="selective")  # 1 + 2 groups
            return torch.zeros(3, 1, 2, 4), torch.zeros(3, 1, 2, 4), schedule

    with pytest.raises(ValueError, match="plain schedule"):
        predict_stages(Recollecting().eval(), [{}])


def test_query_predictions_by_hand() -> None:
    # One stage, one image of height 100 and width 200, two queries, three classes.
    logits = torch.tensor([[[[0.0, 2.0, -1.0], [-3.0, -2.0, -4.0]]]])  # [S=1, B=1, Q=2, K=3]
    # q0 centred, half the size: x 0.25..0.75, y 0.25..0.75 -> [50, 25, 150, 75].
    # q1 sticks out on the right: x 0.7..1.1 -> clipped at 1.0; y 0.4..0.6 -> [140, 40, 200, 60].
    boxes = torch.tensor([[[[0.5, 0.5, 0.5, 0.5], [0.9, 0.5, 0.4, 0.2]]]])
    inputs = [{"image": torch.zeros(3, 10, 20), "height": 100, "width": 200}]
    (prediction,) = query_predictions(logits, boxes, inputs)
    assert prediction["labels"].tolist() == [[1, 1]]  # argmax of each query's logits
    expected_scores = torch.tensor([[2.0, -2.0]]).sigmoid()
    torch.testing.assert_close(prediction["scores"], expected_scores)
    torch.testing.assert_close(
        prediction["boxes"], torch.tensor([[[50.0, 25.0, 150.0, 75.0], [140.0, 40.0, 200.0, 60.0]]])
    )


def test_query_predictions_agree_with_the_detectors_top_detection(model) -> None:
    inputs = batch()
    logits, boxes = predict_stages(model, inputs)
    per_query = query_predictions(logits, boxes, inputs)
    final = stage_predictions(model, inputs)[-1]
    for prediction, output in zip(per_query, final, strict=True):
        assert prediction["boxes"].shape == (6, 10, 4) and prediction["scores"].shape == (6, 10)
        # The detector's best detection is the best query's top class, with the same box.
        q = int(prediction["scores"][-1].argmax())
        top = int(output["scores"].argmax())
        assert float(output["scores"][top]) == pytest.approx(float(prediction["scores"][-1, q]))
        assert int(output["labels"][top]) == int(prediction["labels"][-1, q])
        torch.testing.assert_close(output["boxes"][top], prediction["boxes"][-1, q])


@pytest.mark.parametrize("entry", table.DETECTORS, ids=lambda entry: entry.name)
def test_every_detector(entry: table.DetectorEntry) -> None:
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIGS / entry.config)), entry.tiny)
    torch.manual_seed(0)
    detector = instantiate(cfg.model).eval()
    inputs = batch()
    with torch.no_grad():
        normal = detector(inputs)
    logits, boxes = predict_stages(detector, inputs)
    stages = stage_predictions(detector, inputs)
    assert len(stages) == logits.shape[0] == detector.recollection.num_stages
    for x, final, expected, prediction in zip(
        inputs, stages[-1], normal, query_predictions(logits, boxes, inputs), strict=True
    ):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(final[key], expected[key]), key
        q, top = int(prediction["scores"][-1].argmax()), int(expected["scores"].argmax())
        assert float(expected["scores"][top]) == pytest.approx(float(prediction["scores"][-1, q]))
        # Per-query boxes are clipped to the image; AdaMixer's output is not (as in mmdet).
        limit = torch.tensor([x["width"], x["height"]] * 2, dtype=torch.float32)
        box = torch.minimum(expected["boxes"][top].clamp(min=0), limit)
        torch.testing.assert_close(box, prediction["boxes"][-1, q])
