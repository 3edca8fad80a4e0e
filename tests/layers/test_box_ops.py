"""Box post-processing: normalised cxcywh to pixel xyxy, by hand."""

from __future__ import annotations

import pytest
import torch

from sqr.layers.box_ops import box_cxcywh_to_absolute_xyxy

# An image of height 100 and width 200.
# b0 centred, half the size: x 0.25..0.75, y 0.25..0.75 -> [50, 25, 150, 75], inside.
# b1 sticks out on the right and the top: x 0.7..1.1, y -0.1..0.3 -> [140, -10, 220, 30].
BOXES = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.4, 0.4]])
UNCLIPPED = torch.tensor([[50.0, 25.0, 150.0, 75.0], [140.0, -10.0, 220.0, 30.0]])
CLIPPED = torch.tensor([[50.0, 25.0, 150.0, 75.0], [140.0, 0.0, 200.0, 30.0]])


@pytest.mark.parametrize(("clip", "expected"), [(False, UNCLIPPED), (True, CLIPPED)])
def test_box_cxcywh_to_absolute_xyxy_by_hand(clip: bool, expected: torch.Tensor) -> None:
    boxes = BOXES.clone()
    torch.testing.assert_close(box_cxcywh_to_absolute_xyxy(boxes, 100, 200, clip=clip), expected)
    assert torch.equal(boxes, BOXES)  # clipping writes into the result, never into the input


def test_box_cxcywh_to_absolute_xyxy_keeps_leading_dims() -> None:
    # [S=3, Q=2, 4], as query_predictions passes one image's boxes of every stage.
    stacked = BOXES.expand(3, 2, 4)
    result = box_cxcywh_to_absolute_xyxy(stacked, 100, 200, clip=True)
    torch.testing.assert_close(result, CLIPPED.expand(3, 2, 4))
