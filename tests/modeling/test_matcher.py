"""Tests for sqr.modeling.matcher."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from sqr.modeling.matcher import HungarianMatcher


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
            giou = generalized_box_iou(_xyxy(boxes[q : q + 1]), _xyxy(tgt_boxes[t : t + 1]))[0, 0]
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

    indices = matcher(logits, boxes, targets)

    assert len(indices) == num_groups and all(len(per) == len(counts) for per in indices)
    for g in range(num_groups):
        for b, n in enumerate(counts):
            query_idx, target_idx = indices[g][b]
            assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
            assert query_idx.device.type == "cpu"
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

    query_idx, target_idx = HungarianMatcher()(logits, boxes, targets)[0][0]

    assert query_idx.tolist() == [0, 2]
    assert target_idx.tolist() == [1, 0]


def test_image_without_targets_gives_empty_indices():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 4, 3, generator=gen)
    boxes = _random_boxes(2, 2, 4, generator=gen)
    targets = _random_targets([2, 0], 3, gen)

    indices = HungarianMatcher()(logits, boxes, targets)

    for g in range(2):
        assert len(indices[g][0][0]) == 2
        query_idx, target_idx = indices[g][1]
        assert query_idx.shape == (0,) and target_idx.shape == (0,)
        assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64


def test_all_images_without_targets():
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(2)
    ]
    indices = HungarianMatcher()(torch.randn(3, 2, 4, 5), torch.rand(3, 2, 4, 4), targets)
    assert [[len(q) for q, _ in per] for per in indices] == [[0, 0]] * 3


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
        query_idx, target_idx = matcher(logits, boxes, targets)[0][0]
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

    indices = matcher(logits, boxes, targets)

    for g in range(2):
        t = targets[0]
        cost = _reference_cost(
            logits[g, 0], boxes[g, 0], t["labels"], t["boxes"], (1, 3, 0.5), xyxy=True
        )
        rows, cols = linear_sum_assignment(cost.numpy())
        assert indices[g][0][0].tolist() == rows.tolist()
        assert indices[g][0][1].tolist() == cols.tolist()


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
    query_idx, target_idx = HungarianMatcher()(logits, boxes, targets)[0][0]
    assert query_idx.tolist() == [1] and target_idx.tolist() == [0]


def test_nan_logits_raise():
    logits = torch.zeros(2, 2, 3, 2)
    logits[1, 0, 2, 1] = float("nan")
    boxes = torch.full((2, 2, 3, 4), 0.5)
    targets = [
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
        for _ in range(2)
    ]
    with pytest.raises(ValueError, match="group 1, image 0"):
        HungarianMatcher()(logits, boxes, targets)


def test_invalid_arguments():
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
