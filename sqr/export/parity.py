"""Compare an exported detector's detections with eager PyTorch's on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["BOX_TOLERANCE", "SCORE_TOLERANCE", "Parity", "ParityError", "compare_detections"]

#: The largest differences an export may show: boxes in pixels, scores in probability.
BOX_TOLERANCE = 1e-2
SCORE_TOLERANCE = 1e-4


class ParityError(AssertionError):
    """The exported graph's detections differ from eager PyTorch's beyond the tolerances."""


@dataclass(frozen=True)
class Parity:
    """The largest differences over all images and detections."""

    images: int
    detections: int
    max_box_diff: float  #: pixels
    max_score_diff: float


def compare_detections(
    eager: Sequence[dict[str, torch.Tensor]],
    exported: Sequence[dict[str, torch.Tensor]],
    names: Sequence[str],
    *,
    box_tolerance: float = BOX_TOLERANCE,
    score_tolerance: float = SCORE_TOLERANCE,
) -> Parity:
    """Check that two runs gave the same detections: same count and labels in the same order,
    boxes within ``box_tolerance`` px and scores within ``score_tolerance``.

    Args:
        eager, exported: per image {"boxes" [k, 4], "scores" [k], "labels" [k]}.
        names: one name per image, for the error message.

    Raises:
        ParityError: naming the image and the difference.
    """
    if not len(eager) == len(exported) == len(names):
        raise ParityError(
            f"{len(eager)} eager results, {len(exported)} exported, {len(names)} images"
        )
    box_diff = score_diff = 0.0
    detections = 0
    for name, a, b in zip(names, eager, exported, strict=True):
        a = {k: v.detach().cpu() for k, v in a.items()}
        b = {k: v.detach().cpu() for k, v in b.items()}
        if a["labels"].shape != b["labels"].shape:
            raise ParityError(
                f"{name}: eager PyTorch kept {len(a['labels'])} detections, the exported graph "
                f"{len(b['labels'])}"
            )
        if not torch.equal(a["labels"].to(torch.int64), b["labels"].to(torch.int64)):
            wrong = int((a["labels"] != b["labels"]).sum())
            raise ParityError(f"{name}: {wrong} of {len(a['labels'])} labels differ")
        detections += len(a["labels"])
        if len(a["labels"]):
            box_diff = max(box_diff, float((a["boxes"] - b["boxes"]).abs().max()))
            score_diff = max(score_diff, float((a["scores"] - b["scores"]).abs().max()))
        if not (box_diff <= box_tolerance and score_diff <= score_tolerance):  # NaN fails too
            raise ParityError(
                f"{name}: boxes differ by up to {box_diff:.3g} px (tolerance {box_tolerance}), "
                f"scores by {score_diff:.3g} (tolerance {score_tolerance})"
            )
    return Parity(len(names), detections, box_diff, score_diff)
