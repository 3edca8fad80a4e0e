"""Stage-wise metrics on hand-made prediction sequences; every expected value is worked out in
the comments from the definitions in sqr/evaluation/stage_analysis.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

from sqr.data import register_coco_instances
from sqr.evaluation import COCOEvaluator
from sqr.evaluation.stage_analysis import (
    FadingCounts,
    StageAnalyzer,
    count_fading_exacerbation,
    match_stage,
    oracle_stages,
    select_stages,
)

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # one object, area 100
FAR = [20.0, 20.0, 30.0, 30.0]  # overlaps nothing


def sequence(*queries: list[tuple[list[float], int, float]]) -> tuple[torch.Tensor, ...]:
    """Per query a list over stages of (box, label, score) -> boxes [S, Q, 4], scores, labels."""
    boxes = torch.tensor([[[*p[0]] for p in q] for q in queries]).transpose(0, 1)
    labels = torch.tensor([[p[1] for p in q] for q in queries]).T
    scores = torch.tensor([[p[2] for p in q] for q in queries]).T
    return boxes, scores, labels


# Case A, 3 stages, ground truth GT of class 0.
# q0 refines the right object but worse each stage: IoU 1.0 / 0.8 / 0.6 (boxes 10 px wide and
#   10 / 8 / 6 px high inside GT: IoU = height / 10), scores 0.9 / 0.7 / 0.5.
# q1 is a class-1 box far away, scores 0.3 / 0.2 / 0.4.
CASE_A = sequence(
    [([0, 0, 10, 10], 0, 0.9), ([0, 0, 10, 8], 0, 0.7), ([0, 0, 10, 6], 0, 0.5)],
    [(FAR, 1, 0.3), (FAR, 1, 0.2), (FAR, 1, 0.4)],
)


def test_case_a_at_iou_05() -> None:
    # Final q0: IoU 0.6 >= 0.5, class 0, the only candidate -> TP (tp = 1). Stage 1 has q0 TP
    # with IoU 1.0 > 0.6 and score 0.9 > 0.5 -> faded (1 of 1).
    # Final q1: FP with score 0.4 (fp = 1); at stage 1 it is a FP with 0.3 < 0.4 -> exacerbated.
    counts = count_fading_exacerbation(*CASE_A, GT, torch.tensor([0]), 0.5)
    assert counts == FadingCounts(tp=1, tp_faded=1, fp=1, fp_exacerbated=1)
    summary = counts.summary()
    assert summary["tp_fading_rate"] == 1.0 and summary["fp_exacerbation_rate"] == 1.0


def test_case_a_at_iou_075() -> None:
    # Final q0: IoU 0.6 < 0.75 -> FP, score 0.5. Its earlier stages (IoU 1.0 and 0.8) are TPs,
    # not FPs, so it is not exacerbated. q1 is exacerbated as at 0.5. No final TP at all.
    counts = count_fading_exacerbation(*CASE_A, GT, torch.tensor([0]), 0.75)
    assert counts == FadingCounts(tp=0, tp_faded=0, fp=2, fp_exacerbated=1)
    summary = counts.summary()
    assert summary["tp_fading_rate"] is None and summary["fp_exacerbation_rate"] == 0.5


def test_fp_min_score_leaves_low_final_scores_out() -> None:
    # At 0.5 the only final FP is q1 with score 0.4 < 0.45: nothing is counted.
    counts = count_fading_exacerbation(*CASE_A, GT, torch.tensor([0]), 0.5, fp_min_score=0.45)
    assert (counts.fp, counts.fp_exacerbated) == (0, 0)
    assert counts.summary()["fp_exacerbation_rate"] is None


def test_only_the_highest_scored_candidate_is_a_tp() -> None:
    # Case B, 2 stages, GT of class 2.
    # q0: exact box, scores 0.8 / 0.6. q1: box 10 x 9 inside GT (IoU 0.9), scores 0.5 / 0.7.
    # Stage 1: both are candidates, q0 (0.8) is the TP. Final stage: q1 (0.7 > 0.6) is the TP.
    # Final TP (q1, GT): q1 was no TP at stage 1 -> not faded, although q0 was better then.
    # Final FP q0 (0.6): it was a TP at stage 1, not a FP -> not exacerbated.
    case_b = sequence(
        [([0, 0, 10, 10], 2, 0.8), ([0, 0, 10, 10], 2, 0.6)],
        [([0, 0, 10, 9], 2, 0.5), ([0, 0, 10, 9], 2, 0.7)],
    )
    counts = count_fading_exacerbation(*case_b, GT, torch.tensor([2]), 0.5)
    assert counts == FadingCounts(tp=1, tp_faded=0, fp=1, fp_exacerbated=0)
    # Oracle: q0 is a TP only at stage 1 (0), q1 only at the final stage (1).
    assert oracle_stages(*case_b, GT, torch.tensor([2])).tolist() == [0, 1]


def test_an_earlier_prediction_of_the_wrong_class_has_not_faded() -> None:
    # q0 at stage 1: exact box, score 0.9 but class 1 -> no TP for the class-0 GT.
    # Final: IoU 0.6, class 0, score 0.5 -> TP; nothing earlier is a better TP -> not faded.
    case = sequence([([0, 0, 10, 10], 1, 0.9), ([0, 0, 10, 6], 0, 0.5)])
    counts = count_fading_exacerbation(*case, GT, torch.tensor([0]), 0.5)
    assert counts == FadingCounts(tp=1, tp_faded=0, fp=0, fp_exacerbated=0)
    same_iou = sequence([([0, 0, 10, 6], 0, 0.9), ([0, 0, 10, 6], 0, 0.5)])
    # Same IoU 0.6 at both stages, higher score earlier: not strictly better -> not faded.
    assert count_fading_exacerbation(*same_iou, GT, torch.tensor([0]), 0.5).tp_faded == 0


def test_image_without_ground_truth_counts_every_query_as_fp() -> None:
    # q0 rises 0.1 -> 0.2 (exacerbated), q1 falls 0.3 -> 0.2 (not): 1 of 2.
    case = sequence([(FAR, 0, 0.1), (FAR, 0, 0.2)], [(FAR, 1, 0.3), (FAR, 1, 0.2)])
    empty = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    counts = count_fading_exacerbation(*case, *empty, 0.5)
    assert counts == FadingCounts(tp=0, tp_faded=0, fp=2, fp_exacerbated=1)
    # Oracle: never a TP -> the lowest score: q0 at stage 0 (0.1); q1 at stage 1 (0.2).
    assert oracle_stages(*case, *empty).tolist() == [0, 1]


def test_counts_add_over_images() -> None:
    total = FadingCounts(1, 1, 1, 1) + FadingCounts(tp=0, tp_faded=0, fp=2, fp_exacerbated=1)
    assert total.summary() == {
        "tp": 1,
        "tp_faded": 1,
        "fp": 3,
        "fp_exacerbated": 2,
        "tp_fading_rate": 1.0,
        "fp_exacerbation_rate": 2 / 3,
    }


def test_match_stage_one_prediction_may_serve_two_objects_and_ties_go_to_the_lower_index() -> None:
    # Two class-0 objects, [0, 0, 10, 10] and [0, 0, 10, 8]; IoU between them 0.8.
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0]])
    # q0 and q1 both the first object's box with the same score 0.5; q2 class 1.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    tp, iou = match_stage(
        boxes,
        torch.tensor([0.5, 0.5, 0.9]),
        torch.tensor([0, 0, 1]),
        gts,
        torch.tensor([0, 0]),
        0.5,
    )
    # q0 and q1 are candidates for both objects (IoU 1.0 and 0.8); tie -> q0 for both.
    assert tp.tolist() == [[True, True], [False, False], [False, False]]
    torch.testing.assert_close(iou[0], torch.tensor([1.0, 0.8]))


def test_an_iou_equal_to_the_threshold_is_enough() -> None:
    # Box [0, 0, 10, 5] inside GT [0, 0, 10, 10]: IoU 50 / 100 = 0.5 exactly (COCO's >=).
    tp, _ = match_stage(
        torch.tensor([[0.0, 0.0, 10.0, 5.0]]),
        torch.tensor([0.3]),
        torch.tensor([0]),
        GT,
        torch.tensor([0]),
        0.5,
    )
    assert tp.tolist() == [[True]]


def test_oracle_breaks_a_quality_tie_towards_the_later_stage() -> None:
    # Stage 1: exact box, score 0.5 -> IoU x score 1.0 x 0.5 = 0.5.
    # Stage 2: box [0, 0, 10, 7] (IoU 0.7), score 0.2 -> 0.14.
    # Stage 3: box [0, 0, 10, 5] (IoU 0.5), score 1.0 -> 0.5, tied with stage 1 -> stage 3 (2).
    case = sequence([([0, 0, 10, 10], 0, 0.5), ([0, 0, 10, 7], 0, 0.2), ([0, 0, 10, 5], 0, 1.0)])
    assert oracle_stages(*case, GT, torch.tensor([0])).tolist() == [2]


def test_oracle_picks_the_best_stage_and_keeps_the_later_one_on_ties() -> None:
    # Case A at 0.5: q0 is a TP at every stage with IoU x score 0.9, 0.56, 0.3 -> stage 0.
    # q1 is never a TP: its lowest score 0.2 is at stage 1.
    stages = oracle_stages(*CASE_A, GT, torch.tensor([0]))
    assert stages.tolist() == [0, 1]
    # A query that never changes and never hits: all stages tie -> the final stage (2).
    still = sequence([(FAR, 0, 0.3)] * 3)
    assert oracle_stages(*still, GT, torch.tensor([0])).tolist() == [2]
    boxes, scores, labels = CASE_A
    picked = select_stages({"boxes": boxes, "scores": scores, "labels": labels}, stages)
    assert picked["boxes"].tolist() == [[0, 0, 10, 10], FAR]
    assert picked["scores"].tolist() == pytest.approx([0.9, 0.2])
    assert picked["labels"].tolist() == [0, 1]


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> str:
    """Two 100 x 100 images, one class-"a" object each: [10, 10, 50, 50] and [20, 20, 60, 60]."""
    root = tmp_path_factory.mktemp("tiny_coco")
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 40, 40],
                "area": 1600,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 1,
                "bbox": [20, 20, 40, 40],
                "area": 1600,
                "iscrowd": 0,
            },
        ],
    }
    (root / "val.json").write_text(json.dumps(data))
    name = f"stage_analysis_tiny_{uuid.uuid4().hex}"
    register_coco_instances(name, str(Path(root) / "val.json"), str(root))
    return name


def output(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores),
    }


def test_analyzer_per_stage_oracle_and_rates(tiny_coco: str) -> None:
    box1, box2, far = [10.0, 10.0, 50.0, 50.0], [20.0, 20.0, 60.0, 60.0], [80.0, 80.0, 90.0, 90.0]
    inputs = [{"image_id": 1}, {"image_id": 2}]
    # Stage 1: both objects exactly, class a -> AP 100.
    # Stage 2: image 1's box but class b, nothing on image 2 -> class a has no hit: AP 0
    #   (class b has no ground truth and is left out of the mean).
    # Stage 3: image 1 exactly, nothing on image 2 -> recall 0.5 at precision 1: 51 of COCO's
    #   101 recall points (0.00 .. 0.50) have precision 1 -> AP 100 * 51 / 101 at every IoU.
    stage_outputs = [
        [output([box1], [0], [0.9]), output([box2], [0], [0.9])],
        [output([box1], [1], [0.9]), output([], [], [])],
        [output([box1], [0], [0.9]), output([], [], [])],
    ]
    # One query per image, same boxes as above; on image 2 it drifts to a far box (score 0.1).
    queries = [
        {
            "boxes": torch.tensor([[box1], [box1], [box1]]),
            "labels": torch.tensor([[0], [1], [0]]),
            "scores": torch.tensor([[0.9], [0.9], [0.9]]),
        },
        {
            "boxes": torch.tensor([[box2], [far], [far]]),
            "labels": torch.tensor([[0], [1], [0]]),
            "scores": torch.tensor([[0.9], [0.1], [0.1]]),
        },
    ]
    gts = [
        {"boxes": torch.tensor([box1]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([box2]), "labels": torch.tensor([0])},
    ]
    analyzer = StageAnalyzer(lambda: COCOEvaluator(tiny_coco), num_stages=3)
    analyzer.process(inputs, stage_outputs, queries, gts)
    result = analyzer.evaluate()

    assert result["num_images"] == 2 and result["num_stages"] == 3
    assert [ap["AP"] for ap in result["stage_ap"]] == pytest.approx([100.0, 0.0, 100 * 51 / 101])
    # Final per-query predictions: image 1 a hit (0.9), image 2 a miss (0.1) -> 51 / 101 again.
    assert result["oracle"]["final_query_AP"]["AP"] == pytest.approx(100 * 51 / 101)
    # Oracle: image 1's query is a TP at stages 1 and 3 (IoU x score 0.9 both: the later, 3);
    # image 2's is a TP at stage 1 only -> both objects found -> AP 100.
    assert result["oracle"]["oracle_AP"]["AP"] == pytest.approx(100.0)
    # Rates at 0.5 (and 0.75, the boxes being exact): the final TP on image 1 had no strictly
    # better IoU earlier -> 0 of 1 faded; the final FP on image 2 (0.1) was a FP at stage 2
    # with the same score 0.1, not a lower one, and a TP at stage 1 -> 0 of 1 exacerbated.
    for threshold in ("0.5", "0.75"):
        rates = result["rates"][threshold]
        assert (rates["tp"], rates["tp_faded"], rates["fp"], rates["fp_exacerbated"]) == (
            1,
            0,
            1,
            0,
        )


def test_analyzer_rejects_a_wrong_number_of_stages(tiny_coco: str) -> None:
    analyzer = StageAnalyzer(lambda: COCOEvaluator(tiny_coco), num_stages=3)
    with pytest.raises(ValueError, match="expected 3 stages"):
        analyzer.process([{"image_id": 1}], [[output([], [], [])]], [], [])
