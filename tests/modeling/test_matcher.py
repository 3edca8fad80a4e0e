"""Tests for sqr.modeling.matcher."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.recollection_reference import CONFIGS
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from sqr.config import LazyConfig
from sqr.layers import box_ops
from sqr.modeling.matcher import HungarianMatcher

GIOU_EPS = 1e-6  # detrex's, the matcher's default


def _random_boxes(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Valid normalised cxcywh boxes of shape [*shape, 4]."""
    centers = 0.2 + 0.6 * torch.rand(*shape, 2, generator=generator)
    sizes = 0.05 + 0.35 * torch.rand(*shape, 2, generator=generator)
    return torch.cat([centers, sizes], dim=-1)


def _random_targets(counts: list[int], num_classes: int, generator: torch.Generator) -> list[dict]:
    return [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=generator),
            "boxes": _random_boxes(n, generator=generator),
        }
        for n in counts
    ]


def _xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _giou(a: torch.Tensor, b: torch.Tensor, eps: float = GIOU_EPS) -> torch.Tensor:
    """GIoU of two xyxy boxes as detrex writes it: ``inter / (union + eps) - (hull - union) /
    (hull + eps)``."""
    inter = (torch.min(a[2:], b[2:]) - torch.max(a[:2], b[:2])).clamp(min=0).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    hull = (torch.max(a[2:], b[2:]) - torch.min(a[:2], b[:2])).prod()
    return inter / (union + eps) - (hull - union) / (hull + eps)


def _reference_cost(logits, boxes, labels, tgt_boxes, weights, alpha=0.25, gamma=2.0, xyxy=False):
    """Cost of one (group, image) pair, entry by entry: logits [Q, K], boxes [Q, 4] -> [Q, N]."""
    w_class, w_bbox, w_giou = weights
    num_queries, num_targets = logits.shape[0], labels.shape[0]
    cost = torch.zeros(num_queries, num_targets, dtype=torch.float64)
    for q in range(num_queries):
        for t in range(num_targets):
            p = torch.sigmoid(logits[q, labels[t]].double())
            pos = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8)
            neg = (1 - alpha) * p**gamma * -torch.log(1 - p + 1e-8)
            a, b = boxes[q].double(), tgt_boxes[t].double()
            if xyxy:
                a, b = _xyxy(a), _xyxy(b)
            l1 = (a - b).abs().sum()
            giou = _giou(_xyxy(boxes[q].double()), _xyxy(tgt_boxes[t].double()))
            cost[q, t] = w_bbox * l1 + w_class * (pos - neg) - w_giou * giou
    return cost


def test_batched_matching_equals_per_pair_matching():
    gen = torch.Generator().manual_seed(0)
    num_groups, num_queries, num_classes = 3, 5, 4
    counts = [3, 0, 6, 5]  # an empty image, more targets than queries, exactly Q targets
    logits = torch.randn(num_groups, len(counts), num_queries, num_classes, generator=gen)
    boxes = _random_boxes(num_groups, len(counts), num_queries, generator=gen)
    targets = _random_targets(counts, num_classes, gen)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)

    pairs = matcher(logits, boxes, targets)

    assert all(x.dtype == torch.int64 and x.device == logits.device for x in pairs)
    # Ordered by group, then image, then query, as the criterion's sums expect.
    order = (pairs.group * len(counts) + pairs.image) * num_queries + pairs.query
    assert torch.equal(order, order.sort().values)
    for g in range(num_groups):
        for b, n in enumerate(counts):
            query_idx, target_idx = pairs.of(g, b)
            assert len(query_idx) == len(target_idx) == min(num_queries, n)
            if n == 0:
                continue
            cost = _reference_cost(
                logits[g, b], boxes[g, b], targets[b]["labels"], targets[b]["boxes"], (2, 5, 2)
            )
            rows, cols = linear_sum_assignment(cost.numpy())
            assert query_idx.tolist() == rows.tolist()
            assert target_idx.tolist() == cols.tolist()
            assert query_idx.tolist() == sorted(query_idx.tolist())


def test_obvious_assignment():
    # 3 queries, 2 targets: query 2 sits on target 0 (class 1), query 0 on target 1 (class 0),
    # both confident in the right class; query 1 is a low-confidence box elsewhere.
    targets = [
        {
            "labels": torch.tensor([1, 0]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
        }
    ]
    boxes = torch.tensor([[[[0.7, 0.6, 0.3, 0.4], [0.5, 0.9, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]]]])
    logits = torch.tensor([[[[6.0, -6.0], [-6.0, -6.0], [-6.0, 6.0]]]])

    query_idx, target_idx = HungarianMatcher()(logits, boxes, targets).of(0, 0)

    assert query_idx.tolist() == [0, 2]
    assert target_idx.tolist() == [1, 0]


def test_image_without_targets_gives_empty_indices():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 4, 3, generator=gen)
    boxes = _random_boxes(2, 2, 4, generator=gen)
    targets = _random_targets([2, 0], 3, gen)

    pairs = HungarianMatcher()(logits, boxes, targets)

    for g in range(2):
        assert len(pairs.of(g, 0)[0]) == 2
        query_idx, target_idx = pairs.of(g, 1)
        assert query_idx.shape == (0,) and target_idx.shape == (0,)


def test_all_images_without_targets():
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(2)
    ]
    pairs = HungarianMatcher()(torch.randn(3, 2, 4, 5), torch.rand(3, 2, 4, 4), targets)
    assert all(x.shape == (0,) and x.dtype == torch.int64 for x in pairs)


def test_xyxy_l1_format_changes_the_choice():
    # One query, two candidate targets, L1 cost only.
    # Target 0 shifts the centre by 0.1: cxcywh L1 = 0.1, xyxy L1 = 0.1 + 0.1 = 0.2.
    # Target 1 widens the box by 0.15: cxcywh L1 = 0.15, xyxy L1 = 0.075 + 0.075 = 0.15.
    boxes = torch.tensor([[[[0.5, 0.5, 0.2, 0.2]]]])
    targets = [
        {
            "labels": torch.tensor([0, 0]),
            "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.5, 0.5, 0.35, 0.2]]),
        }
    ]
    logits = torch.zeros(1, 1, 1, 1)

    def match(fmt: str) -> list[int]:
        matcher = HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0, l1_box_format=fmt)
        query_idx, target_idx = matcher(logits, boxes, targets).of(0, 0)
        assert query_idx.tolist() == [0]
        return target_idx.tolist()

    assert match("cxcywh") == [0]
    assert match("xyxy") == [1]


def test_xyxy_matching_equals_reference():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 6, 3, generator=gen)
    boxes = _random_boxes(2, 1, 6, generator=gen)
    targets = _random_targets([4], 3, gen)
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=3.0, cost_giou=0.5, l1_box_format="xyxy")

    pairs = matcher(logits, boxes, targets)

    for g in range(2):
        t = targets[0]
        cost = _reference_cost(
            logits[g, 0], boxes[g, 0], t["labels"], t["boxes"], (1, 3, 0.5), xyxy=True
        )
        rows, cols = linear_sum_assignment(cost.numpy())
        query_idx, target_idx = pairs.of(g, 0)
        assert query_idx.tolist() == rows.tolist() and target_idx.tolist() == cols.tolist()


def test_focal_class_cost_prefers_confident_query():
    # Same boxes; the class term alone decides. Cost at p: pos - neg, lower for larger p.
    alpha, gamma = 0.25, 2.0

    def class_cost(p: float) -> float:
        pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
        neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
        return pos - neg

    assert class_cost(0.9) < class_cost(0.1)
    boxes = torch.full((1, 1, 2, 4), 0.5)
    logits = torch.tensor([[[[math.log(0.1 / 0.9)], [math.log(0.9 / 0.1)]]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]
    query_idx, target_idx = HungarianMatcher()(logits, boxes, targets).of(0, 0)
    assert query_idx.tolist() == [1] and target_idx.tolist() == [0]


def test_nan_logits_are_matched_last_not_an_error():
    # The trainer, not the matcher, reports a diverged model (through the non-finite loss).
    logits = torch.zeros(2, 2, 3, 2)
    logits[1, 0, 2, 1] = float("nan")
    boxes = torch.full((2, 2, 3, 4), 0.5)
    boxes[1, 0, 2] = torch.tensor([0.5, 0.5, 0.2, 0.2])  # would be the best match but for NaN
    targets = [
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
        for _ in range(2)
    ]
    query_idx, target_idx = HungarianMatcher()(logits, boxes, targets).of(1, 0)
    assert target_idx.tolist() == [0] and query_idx.tolist() != [2]


def test_giou_eps_enters_union_and_hull_as_in_detrex():
    # a = [0, 0, 0.01, 0.01], b = [0.005, 0.005, 0.015, 0.015]: both of area 1e-4, overlapping
    # on a 0.005 x 0.005 square, so inter = 2.5e-5, union = 2e-4 - 2.5e-5 = 1.75e-4 and the hull
    # (0.015 x 0.015) = 2.25e-4.
    # detrex: inter / (union + eps) - (hull - union) / (hull + eps), the raw union in the
    # numerator: 2.5e-5 / 1.76e-4 - 5e-5 / 2.26e-4 = 25/176 - 25/113.
    # torchvision (eps = 0): 2.5e-5 / 1.75e-4 - 5e-5 / 2.25e-4 = 1/7 - 2/9 = -5/63. That is also
    # mmdet's value here, which clamps (max(union, eps)) rather than adds, and the values with the
    # eps in only one of the two places are 25/176 - 2/9 and 1/7 - 25/113: all four differ.
    a = torch.tensor([[0.0, 0.0, 0.01, 0.01]], dtype=torch.float64)
    b = torch.tensor([[0.005, 0.005, 0.015, 0.015]], dtype=torch.float64)

    giou = box_ops.generalized_box_iou(a, b)
    plain = box_ops.generalized_box_iou(a, b, eps=0.0)

    assert giou.shape == (1, 1)
    assert giou.item() == pytest.approx(25 / 176 - 25 / 113, rel=1e-12, abs=0)
    assert plain.item() == pytest.approx(-5 / 63, rel=1e-12, abs=0)
    assert giou.item() - plain.item() == pytest.approx(1.7e-4, abs=1e-5)


def test_giou_without_eps_equals_torchvision_over_leading_dims():
    gen = torch.Generator().manual_seed(5)
    pred = _xyxy(_random_boxes(2, 3, 5, generator=gen))  # [G, B, Q, 4]
    tgt = _xyxy(_random_boxes(2, 3, 4, generator=gen))  # [G, B, N, 4]

    ours = box_ops.generalized_box_iou(pred, tgt, eps=0.0)

    assert ours.shape == (2, 3, 5, 4)
    assert torch.equal(ours, generalized_box_iou(pred, tgt))
    assert torch.equal(ours[1, 2], generalized_box_iou(pred[1, 2], tgt[1, 2]))


def test_giou_eps_keeps_identical_empty_boxes_finite():
    # Two identical zero-area boxes: inter = union = hull = 0. Without eps 0 / 0 is NaN (as in
    # torchvision); with it both terms are 0 / eps = 0.
    box = torch.tensor([[0.3, 0.3, 0.3, 0.3]])
    assert box_ops.generalized_box_iou(box, box).item() == 0.0
    assert box_ops.generalized_box_iou(box, box, eps=0.0).isnan().all()


def test_matcher_giou_eps_decides_a_near_tie():
    # GIoU cost only. One query q = [0, 0, 0.01, 0.01] (area 1e-4) and two targets nested with
    # it, so that each hull equals the union and GIoU = IoU = smaller area / larger area:
    #   t0 = [0, 0, 0.02, 0.01] contains q: 1e-4 / 2e-4 = 0.5, with eps 1e-4 / 2.01e-4 = 0.49751;
    #   t1 = [0, 0, 0.00502, 0.01] lies in q: 5.02e-5 / 1e-4 = 0.502, with eps 5.02e-5 / 1.01e-4
    #   = 0.49703.
    # The eps weighs more on the smaller union, so it flips the choice from t1 to t0.
    boxes = torch.tensor([[[[0.005, 0.005, 0.01, 0.01]]]])
    targets = [
        {
            "labels": torch.tensor([0, 0]),
            "boxes": torch.tensor([[0.01, 0.005, 0.02, 0.01], [0.00251, 0.005, 0.00502, 0.01]]),
        }
    ]
    logits = torch.zeros(1, 1, 1, 1)

    def match(**kwargs) -> list[int]:
        matcher = HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=1, **kwargs)
        return matcher(logits, boxes, targets).of(0, 0)[1].tolist()

    assert match() == [0]  # detrex's eps is the default
    assert match(giou_eps=0.0) == [1]  # torchvision's GIoU


def test_invalid_arguments():
    with pytest.raises(ValueError, match="giou_eps must be non-negative, got -1e-06"):
        HungarianMatcher(giou_eps=-1e-6)
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    with pytest.raises(ValueError, match="'xywh'"):
        HungarianMatcher(l1_box_format="xywh")
    with pytest.raises(ValueError, match="non-negative"):
        HungarianMatcher(cost_bbox=-1)


def test_shape_mismatch_raises():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}]
    with pytest.raises(ValueError, match="pred_boxes"):
        HungarianMatcher()(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 4, 4), targets)
    with pytest.raises(ValueError, match="2 images"):
        HungarianMatcher()(torch.zeros(1, 2, 3, 2), torch.zeros(1, 2, 3, 4), targets)


def test_joint_matching_equals_separate_matchings():
    # Decoder groups and encoder proposals of one step: solved together, each as alone.
    gen = torch.Generator().manual_seed(5)
    decoder = (torch.randn(3, 2, 5, 4, generator=gen), _random_boxes(3, 2, 5, generator=gen))
    proposals = (torch.randn(1, 2, 7, 4, generator=gen), _random_boxes(1, 2, 7, generator=gen))
    targets = _random_targets([3, 2], 4, gen)
    empty = _random_targets([0, 0], 4, gen)
    matcher = HungarianMatcher()

    joint = matcher.match([(*decoder, targets), (*proposals, targets), (*decoder, empty)])

    for pairs, alone in zip(
        joint,
        [matcher(*decoder, targets), matcher(*proposals, targets), matcher(*decoder, empty)],
        strict=True,
    ):
        assert all(torch.equal(a, b) for a, b in zip(pairs, alone, strict=True))
    assert joint[0].group.numel() == 3 * (3 + 2) and joint[2].group.numel() == 0


def test_focal_eps_is_the_log_offset_of_the_class_cost():
    # Class cost only, at p = sigmoid(-16) = 1.1254e-7 (~ e^-16), where the negative term
    # (~ p^2) vanishes: cost = alpha * -log(p + eps), by hand
    #   eps = 1e-12 (mmdet, AdaMixer's reference): 0.25 * 16 = 4.0000;
    #   eps = 1e-8 (detrex): 0.25 * (16 - ln(1 + 1e-8 * e^16)) = 0.25 * (16 - 0.08513) = 3.9787.
    logits = torch.full((1, 1, 1, 1), -16.0)
    boxes = torch.full((1, 1, 1, 4), 0.5)
    labels = torch.zeros(1, 1, dtype=torch.int64)
    target_boxes = torch.full((1, 1, 4), 0.5)
    for eps, by_hand in ((1e-12, 4.0000), (1e-8, 3.9787)):
        matcher = HungarianMatcher(cost_class=1, cost_bbox=0, cost_giou=0, focal_eps=eps)
        cost = matcher._cost(logits, boxes, labels, target_boxes).item()
        assert cost == pytest.approx(by_hand, abs=1e-4), eps
    assert HungarianMatcher().focal_eps == 1e-8  # detrex's, the default
    with pytest.raises(ValueError, match="focal_eps must be positive, got 0"):
        HungarianMatcher(focal_eps=0)


@pytest.mark.parametrize(
    "config, focal_eps",
    [
        ("adamixer_r50_1x.py", 1e-12),  # the SQR authors' mmdet
        ("sqr_adamixer_r50_1x.py", 1e-12),
        ("sqr_adamixer_r101_7stage_300q_3x.py", 1e-12),
        ("dab_detr_r50_50ep.py", 1e-8),  # detrex
        ("sqr_dino_r50_4scale_12ep.py", 1e-8),
    ],
)
def test_each_recipe_has_its_reference_focal_eps(config, focal_eps):
    cfg = LazyConfig.load(str(CONFIGS / config))
    assert cfg.model.criterion.matcher.focal_eps == focal_eps
