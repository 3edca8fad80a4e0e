"""Training under bfloat16 autocast stays close to float32, and box refinement stays float32."""

from __future__ import annotations

import pytest
import torch
from helpers.detectors import build_detector
from helpers.recollection_reference import CONFIGS, _batch

from sqr.layers.box_ops import refine_boxes
from sqr.modeling import table


def test_refinement_is_float32_under_autocast() -> None:
    delta = torch.randn(5, 4).bfloat16()
    reference = torch.tensor([[0.99999, 0.5, 0.2, 0.3]] * 5)  # near the border
    with torch.autocast("cpu", dtype=torch.bfloat16):
        boxes = refine_boxes(delta, reference, 1e-5)
    assert boxes.dtype == torch.float32
    # Exactly the float32 computation from the same (bfloat16-rounded) head output.
    assert torch.equal(boxes, refine_boxes(delta.float(), reference, 1e-5))


@pytest.mark.parametrize("entry", table.DETECTORS, ids=lambda entry: entry.name)
def test_bfloat16_step_matches_float32(entry: table.DetectorEntry) -> None:
    model = build_detector(CONFIGS / entry.config, [*entry.tiny, *entry.no_dropout]).train()
    torch.manual_seed(0)
    fp32 = model(_batch())
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(_batch())
    assert fp32.keys() == bf16.keys()
    for key in fp32:
        assert bf16[key].dtype == torch.float32, key  # losses are reduced in float32
        assert torch.isfinite(bf16[key]), key
    # bfloat16 keeps 8 bits of mantissa: the summed loss agrees to a few percent.
    total32, total16 = sum(fp32.values()).item(), sum(bf16.values()).item()
    assert total16 == pytest.approx(total32, rel=0.05)
    sum(bf16.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
