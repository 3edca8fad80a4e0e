"""Stage-wise analysis: per-stage AP, TP fading rate, FP exacerbation rate, oracle AP.

The observation of Chen et al., "Enhanced Training of Query-Based Object Detection via Selective
Query Recollection" (CVPR 2023, introduction): a decoder often predicts an object correctly at an
intermediate stage and worse at the last one. All definitions follow the same query across
stages. ``P[q, s]`` is query ``q``'s prediction at stage ``s`` (``s = 0 .. S-1``, ``S-1`` the
final output) as :func:`sqr.evaluation.stages.query_predictions` defines it: the query's top
class, its score ``max_k sigmoid(logit_k)``, its box (absolute xyxy). Crowd ground truth is left
out. Exact definitions used here, at an IoU threshold ``t`` (0.5 and 0.75 by default):

* **True positive.** ``P[q, s]`` is a TP towards ground truth ``g`` when ``IoU(P[q, s], g) >= t``
  (COCO's convention for "exceeds"), its label equals ``g``'s, and its score is the highest among
  the stage-``s`` predictions that meet both conditions for ``g`` (ties go to the lower query
  index). So ``g`` has at most one TP per stage; one prediction may be the TP of several ``g``.
* **False positive.** ``P[q, s]`` is a TP towards no ground truth.
* **TP fading rate** = ``faded / tp``: ``tp`` counts the pairs ``(q, g)`` with ``P[q, S-1]`` a TP
  towards ``g``; such a pair is *faded* when some earlier stage ``s < S-1`` has ``P[q, s]`` a TP
  towards the same ``g`` with a strictly higher IoU with ``g`` and a strictly higher score.
* **FP exacerbation rate** = ``exacerbated / fp``: ``fp`` counts the queries whose final
  prediction is a FP with score ``>= fp_min_score`` (default 0: every query, as the paper gives no
  score threshold); such a query is *exacerbated* when some earlier stage ``s < S-1`` has
  ``P[q, s]`` also a FP, with a strictly lower score than the final one.
* Both rates pool the counts over all images (not a mean of per-image rates); a rate with a zero
  denominator is ``None``.
* **Oracle** (the paper's upper bound, "best stage per query"): each query keeps the prediction
  of one stage, chosen with the ground truth at IoU ``oracle_iou`` (0.5): among the stages where
  ``P[q, s]`` is a TP, the one with the largest ``IoU * score`` (IoU with the ground truth it is
  a TP towards); when it is a TP at no stage, the stage with the lowest score. Ties go to the
  later stage, so the oracle departs from the final output only where another stage is
  strictly better. The *oracle AP* is the COCO AP of these per-query predictions; compare it
  with ``final_query_AP``, the COCO AP of the final stage's per-query predictions (same
  one-label-per-query format), rather than with the detector's own final AP.
* **Per-stage AP**: COCO AP of ``model.inference`` applied to each stage, as if it were the last
  (:func:`sqr.evaluation.stages.stage_predictions`); the last stage's equals the normal eval AP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torchvision.ops import box_iou

from sqr.evaluation.coco_evaluation import COCOEvaluator
from sqr.utils import comm

__all__ = [
    "FadingCounts",
    "StageAnalyzer",
    "count_fading_exacerbation",
    "match_stage",
    "oracle_stages",
    "select_stages",
]


@dataclass
class FadingCounts:
    """Counts behind the two rates (see the module docstring); they add over images and ranks."""

    tp: int = 0
    tp_faded: int = 0
    fp: int = 0
    fp_exacerbated: int = 0

    def __add__(self, other: FadingCounts) -> FadingCounts:
        return FadingCounts(
            self.tp + other.tp,
            self.tp_faded + other.tp_faded,
            self.fp + other.fp,
            self.fp_exacerbated + other.fp_exacerbated,
        )

    def summary(self) -> dict[str, float | int | None]:
        """The counts plus ``tp_fading_rate`` and ``fp_exacerbation_rate`` (None if 0 / 0)."""
        return {
            **asdict(self),
            "tp_fading_rate": self.tp_faded / self.tp if self.tp else None,
            "fp_exacerbation_rate": self.fp_exacerbated / self.fp if self.fp else None,
        }


def match_stage(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    iou_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """True positives of one stage, or of every stage at once, towards each ground truth
    (module docstring).

    Args:
        boxes: Tensor[Q, 4] xyxy; scores: Tensor[Q]; labels: Tensor[Q] (one per query), or
            Tensor[S, Q, 4], Tensor[S, Q], Tensor[S, Q] for S stages matched independently.
        gt_boxes: Tensor[N, 4] xyxy in the same coordinates; gt_labels: Tensor[N].
        iou_threshold: the IoU a TP needs at least.

    Returns:
        ``(tp, iou)``: bool Tensor[(S,) Q, N], ``tp[(s,) q, g]`` when query ``q`` is the TP
        towards ``g``; and Tensor[(S,) Q, N] of IoUs.
    """
    iou = box_iou(boxes.reshape(-1, 4).float(), gt_boxes.float())
    iou = iou.view(*boxes.shape[:-1], len(gt_boxes))
    candidate = (iou >= iou_threshold) & (labels[..., None] == gt_labels)
    ranked = torch.where(candidate, scores[..., None].float(), float("-inf"))
    tp = torch.zeros_like(candidate)
    if candidate.numel():
        # The first of equal maxima over the queries: ties go to the lower index.
        best = ranked.argmax(dim=-2, keepdim=True)  # [(S,) 1, N]
        tp.scatter_(-2, best, candidate.gather(-2, best))
    return tp, iou


def count_fading_exacerbation(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    iou_threshold: float,
    fp_min_score: float = 0.0,
) -> FadingCounts:
    """TP fading and FP exacerbation counts of one image (module docstring).

    Args:
        boxes: Tensor[S, Q, 4] xyxy; scores: Tensor[S, Q]; labels: Tensor[S, Q] (stage S-1 is
            the final output, query q the same query at every stage).
        gt_boxes: Tensor[N, 4] xyxy; gt_labels: Tensor[N] (crowd boxes already removed).
        iou_threshold: the IoU a TP needs at least.
        fp_min_score: final FPs with a lower score are not counted.
    """
    tp, iou = match_stage(boxes, scores, labels, gt_boxes, gt_labels, iou_threshold)
    final_tp, final_iou, final_score = tp[-1], iou[-1], scores[-1]
    better = tp[:-1] & (iou[:-1] > final_iou) & (scores[:-1, :, None] > final_score[:, None])
    faded = final_tp & better.any(dim=0)
    fp = ~tp.any(dim=-1)  # [S, Q]
    counted = fp[-1] & (final_score >= fp_min_score)
    exacerbated = counted & (fp[:-1] & (scores[:-1] < final_score)).any(dim=0)
    return FadingCounts(
        tp=int(final_tp.sum()),
        tp_faded=int(faded.sum()),
        fp=int(counted.sum()),
        fp_exacerbated=int(exacerbated.sum()),
    )


def oracle_stages(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    iou_threshold: float = 0.5,
) -> torch.Tensor:
    """The stage the oracle keeps for each query of one image (module docstring).

    Args:
        boxes: Tensor[S, Q, 4] xyxy; scores: Tensor[S, Q]; labels: Tensor[S, Q].
        gt_boxes: Tensor[N, 4] xyxy; gt_labels: Tensor[N].
        iou_threshold: the IoU a TP needs at least.

    Returns:
        int64 Tensor[Q] of stage indices.
    """
    tp, iou = match_stage(boxes, scores, labels, gt_boxes, gt_labels, iou_threshold)
    quality = torch.where(tp, iou * scores[..., None].float(), -1.0)
    quality = quality.amax(dim=-1) if quality.shape[-1] else scores.new_full(scores.shape, -1.0)
    # Search the stages from last to first so that ties keep the later stage.
    last = boxes.shape[0] - 1
    best_tp = last - quality.flip(0).argmax(dim=0)
    lowest = last - scores.flip(0).argmin(dim=0)
    return torch.where(tp.any(dim=-1).any(dim=0), best_tp, lowest)


def select_stages(
    prediction: dict[str, torch.Tensor], stages: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Pick one stage per query.

    Args:
        prediction: ``{"boxes": [S, Q, 4], "scores": [S, Q], "labels": [S, Q]}``.
        stages: int64 Tensor[Q], the stage kept for each query.

    Returns:
        ``{"boxes": [Q, 4], "scores": [Q], "labels": [Q]}``.
    """
    queries = torch.arange(len(stages))
    return {key: value[stages, queries] for key, value in prediction.items()}


class StageAnalyzer:
    """Accumulate everything the stage-wise analysis reports, batch by batch, on every rank.

    Usage (see ``tools/analyze_stages.py``)::

        analyzer = StageAnalyzer(lambda: COCOEvaluator("coco_2017_val"), num_stages=6)
        for inputs in loader:
            analyzer.process(inputs, stage_outputs, query_outputs, ground_truths)
        result = analyzer.evaluate()  # on every rank; the result on rank 0, {} elsewhere

    Args:
        make_evaluator: returns a fresh COCO evaluator of the dataset; one is made per stage,
            one for the oracle and one for the final stage's per-query predictions.
        num_stages: decoder stages S.
        iou_thresholds: IoU thresholds of the two rates.
        oracle_iou: IoU threshold of the oracle's TPs.
        fp_min_score: final FPs with a lower score are left out of the FP exacerbation rate.
    """

    def __init__(
        self,
        make_evaluator: Callable[[], COCOEvaluator],
        *,
        num_stages: int,
        iou_thresholds: Sequence[float] = (0.5, 0.75),
        oracle_iou: float = 0.5,
        fp_min_score: float = 0.0,
    ) -> None:
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        self.num_stages = num_stages
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.oracle_iou = float(oracle_iou)
        self.fp_min_score = float(fp_min_score)
        self.stage_evaluators = [make_evaluator() for _ in range(num_stages)]
        self.oracle_evaluator = make_evaluator()
        self.final_query_evaluator = make_evaluator()
        for evaluator in self._evaluators():
            evaluator.reset()
        self.counts = {t: FadingCounts() for t in self.iou_thresholds}
        self.num_images = 0

    def _evaluators(self) -> list[COCOEvaluator]:
        return [*self.stage_evaluators, self.oracle_evaluator, self.final_query_evaluator]

    def process(
        self,
        inputs: list[dict],
        stage_outputs: list[list[dict]],
        query_outputs: list[dict[str, torch.Tensor]],
        ground_truths: list[dict[str, torch.Tensor]],
    ) -> None:
        """Record one batch.

        Args:
            inputs: the batch (each with ``"image_id"``).
            stage_outputs: ``[S][B]`` eval outputs per stage (:func:`stage_predictions`).
            query_outputs: ``[B]`` per-query predictions (:func:`query_predictions`).
            ground_truths: ``[B]`` ``{"boxes": Tensor[N, 4] xyxy, "labels": Tensor[N]}`` in the
                coordinates of the outputs, crowd boxes removed.
        """
        if len(stage_outputs) != self.num_stages:
            raise ValueError(f"expected {self.num_stages} stages, got {len(stage_outputs)}")
        for evaluator, outputs in zip(self.stage_evaluators, stage_outputs, strict=True):
            evaluator.process(inputs, outputs)
        oracle, final = [], []
        for prediction, gt in zip(query_outputs, ground_truths, strict=True):
            prediction = {k: v.detach().cpu() for k, v in prediction.items()}
            if prediction["scores"].shape[0] != self.num_stages:
                raise ValueError(
                    f"per-query predictions have {prediction['scores'].shape[0]} stages, "
                    f"expected {self.num_stages}"
                )
            tensors = (prediction["boxes"], prediction["scores"], prediction["labels"])
            gt_boxes, gt_labels = gt["boxes"].cpu(), gt["labels"].cpu()
            for t in self.iou_thresholds:
                self.counts[t] += count_fading_exacerbation(
                    *tensors, gt_boxes, gt_labels, t, self.fp_min_score
                )
            stages = oracle_stages(*tensors, gt_boxes, gt_labels, self.oracle_iou)
            oracle.append(select_stages(prediction, stages))
            final.append({k: v[-1] for k, v in prediction.items()})
        self.oracle_evaluator.process(inputs, oracle)
        self.final_query_evaluator.process(inputs, final)
        self.num_images += len(inputs)

    def evaluate(self) -> dict:
        """Gather all ranks and compute the results (every rank must call it).

        Returns:
            On rank 0: ``{"num_images", "num_stages", "stage_ap": [S x {"AP", "AP50", ...}],
            "rates": {"0.5": FadingCounts.summary(), ...}, "fp_min_score", "oracle":
            {"iou_threshold", "oracle_AP": {...}, "final_query_AP": {...}}}`` with AP in
            percent; ``{}`` on other ranks.
        """
        stage_ap = [evaluator.evaluate().get("bbox") for evaluator in self.stage_evaluators]
        oracle_ap = self.oracle_evaluator.evaluate().get("bbox")
        final_ap = self.final_query_evaluator.evaluate().get("bbox")
        gathered = comm.all_gather((self.num_images, self.counts))
        if not comm.is_main_process():
            return {}
        counts = {t: FadingCounts() for t in self.iou_thresholds}
        for _, rank_counts in gathered:
            for t in self.iou_thresholds:
                counts[t] += rank_counts[t]
        return {
            "num_images": sum(n for n, _ in gathered),
            "num_stages": self.num_stages,
            "stage_ap": stage_ap,
            "rates": {f"{t:g}": counts[t].summary() for t in self.iou_thresholds},
            "fp_min_score": self.fp_min_score,
            "oracle": {
                "iou_threshold": self.oracle_iou,
                "oracle_AP": oracle_ap,
                "final_query_AP": final_ap,
            },
        }
