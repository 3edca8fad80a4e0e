"""Compare an exported detector's detections with eager PyTorch's on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

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
    """Check that two runs gave the same detections: as many, and each eager detection paired
    with an exported one of the same label, its score within ``score_tolerance`` and its box
    within ``box_tolerance`` px.

    The pairing is a minimum-cost assignment (``scipy.optimize.linear_sum_assignment``), not
    the order of the top-k: detections whose scores tie (queries on identical padding tokens,
    for one) may come out of the two runtimes' top-k in either order.

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
        a = {k: a[k].detach().cpu() for k in ("boxes", "scores", "labels")}
        b = {k: b[k].detach().cpu() for k in ("boxes", "scores", "labels")}
        if a["labels"].shape != b["labels"].shape:
            raise ParityError(
                f"{name}: eager PyTorch kept {len(a['labels'])} detections, the exported graph "
                f"{len(b['labels'])}"
            )
        detections += len(a["labels"])
        if not len(a["labels"]):
            continue
        boxes, scores = _paired_differences(a, b, name, score_tolerance)
        box_diff, score_diff = max(box_diff, boxes), max(score_diff, scores)
        if not (box_diff <= box_tolerance and score_diff <= score_tolerance):  # NaN fails too
            raise ParityError(
                f"{name}: boxes differ by up to {box_diff:.3g} px (tolerance {box_tolerance}), "
                f"scores by {score_diff:.3g} (tolerance {score_tolerance})"
            )
    return Parity(len(names), detections, box_diff, score_diff)


def _paired_differences(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], name: str, score_tolerance: float
) -> tuple[float, float]:
    """The largest box and score differences of the best pairing of ``a``'s detections with
    ``b``'s (same label, scores within ``score_tolerance``; the smallest box differences)."""
    boxes = (a["boxes"][:, None].double() - b["boxes"][None].double()).abs().amax(-1)
    scores = (a["scores"][:, None].double() - b["scores"][None].double()).abs()
    allowed = (a["labels"][:, None].long() == b["labels"][None].long()) & (
        scores <= score_tolerance
    )
    # A pair that is not allowed costs more than every allowed pairing together.
    forbidden = 1.0 + float(boxes.nan_to_num(0.0, 0.0, 0.0).sum()) * 2
    cost = torch.where(allowed, boxes.nan_to_num(forbidden, forbidden, forbidden), forbidden)
    rows, cols = linear_sum_assignment(cost.numpy())
    unpaired = int((~allowed[rows, cols]).sum())
    if unpaired:
        raise ParityError(
            f"{name}: {unpaired} of {len(rows)} eager detections have no exported detection of "
            f"the same label and a score within {score_tolerance}"
        )
    return float(boxes[rows, cols].max()), float(scores[rows, cols].max())
