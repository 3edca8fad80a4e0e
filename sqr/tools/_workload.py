"""What ``tools/benchmark.py`` and ``tools/gpu_check.py`` feed the detectors, and the host matching
timer they both report.

Box counts. Hungarian matching runs on the host (scipy), and its cost grows with the number of
targets, so a benchmark with 1-4 boxes per image hides it. COCO train2017 has about 7.3 boxes per
image on average, a median of 4, about 20 at the 90th percentile and a few images with 50-93. The
synthetic batches draw each image's count from the fixed quantile function
:data:`COCO_LIKE_BOX_QUANTILES` (piecewise linear between the knots, floored; mean 7.4, median 4,
p90 20, 1% of images 50-90), *stratified*: image ``i`` of a batch of ``B`` takes a uniform draw
inside ``[i / B, (i + 1) / B)``, so even a batch of 2 or 8 spans the distribution (its last image
lies in the tail) instead of depending on the luck of a few draws.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

#: (cumulative probability, boxes) knots of the per-image box-count quantile function.
COCO_LIKE_BOX_QUANTILES = (
    (0.0, 1.0),
    (0.3, 2.0),
    (0.5, 4.5),
    (0.75, 8.0),
    (0.9, 20.0),
    (0.97, 28.0),
    (0.99, 50.0),
    (1.0, 91.0),  # floored: at most 90
)


def box_count_quantile(u: float) -> int:
    """The box count at cumulative probability ``u`` in [0, 1) (:data:`COCO_LIKE_BOX_QUANTILES`)."""
    if not 0.0 <= u < 1.0:
        raise ValueError(f"a cumulative probability in [0, 1) is needed, got {u}")
    probs = [p for p, _ in COCO_LIKE_BOX_QUANTILES]
    i = bisect.bisect_right(probs, u) - 1
    (p0, n0), (p1, n1) = COCO_LIKE_BOX_QUANTILES[i], COCO_LIKE_BOX_QUANTILES[i + 1]
    return int(n0 + (u - p0) / (p1 - p0) * (n1 - n0))


def coco_like_box_counts(num_images: int, generator: torch.Generator) -> list[int]:
    """Per-image box counts of one batch, stratified over the quantile function (see above)."""
    draws = torch.rand(num_images, generator=generator, dtype=torch.float64).tolist()
    return [box_count_quantile((i + u) / num_images) for i, u in enumerate(draws)]


def synthetic_batch(
    batch_size: int, height: int, width: int, num_classes: int, seed: int
) -> list[dict[str, Any]]:
    """Random uint8 images with COCO-like box counts (:func:`coco_like_box_counts`); each box at
    least 4 px wide and high and at most half the image, anywhere inside it."""
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for n in coco_like_box_counts(batch_size, gen):
        size = 4 + torch.rand(n, 2, generator=gen) * torch.tensor([width / 2, height / 2])
        corner = torch.rand(n, 2, generator=gen) * (torch.tensor([width, height]) - size)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
        targets = {
            "boxes": torch.cat([corner, corner + size], dim=1),
            "labels": torch.randint(0, num_classes, (n,), generator=gen),
        }
        batch.append({"image": image, "height": height, "width": width, "targets": targets})
    return batch


class HostMatchingTimer:
    """Wall time the Hungarian matchers spend in ``scipy.optimize.linear_sum_assignment``.

    Inside ``with timer:`` the solver that :mod:`sqr.modeling.matcher` calls is wrapped; each call
    records its interval, and :meth:`take` returns the length of their union since the last take
    (solves run side by side on a thread pool count once) and how many there were. The cost
    matrices' computation and device-to-host copy are not included: that is device work, in the
    step time.
    """

    def __init__(self) -> None:
        self._intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._original: Callable | None = None

    def __enter__(self) -> HostMatchingTimer:
        from sqr.modeling import matcher

        if not callable(getattr(matcher, "linear_sum_assignment", None)):
            raise RuntimeError(
                "sqr.modeling.matcher no longer calls linear_sum_assignment: update "
                "HostMatchingTimer to time its host solve"
            )
        self._original = original = matcher.linear_sum_assignment

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                end = time.perf_counter()
                with self._lock:
                    self._intervals.append((start, end))

        matcher.linear_sum_assignment = timed
        return self

    def __exit__(self, *exc: object) -> None:
        from sqr.modeling import matcher

        matcher.linear_sum_assignment = self._original

    def take(self) -> tuple[float, int]:
        """(seconds of host solving, number of solves) since the last call."""
        with self._lock:
            intervals, self._intervals = sorted(self._intervals), []
        total, end = 0.0, -float("inf")
        for start, stop in intervals:
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total, len(intervals)
