"""Tests for sqr.modeling.criterion."""

from __future__ import annotations

import math

import pytest
import torch

import sqr.modeling.criterion as criterion_module
from sqr.layers import box_ops
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.matcher import HungarianMatcher

NAMES = ("loss_class", "loss_bbox", "loss_giou")
DEFAULT_WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
GIOU_EPS = 1e-6  # detrex's, the criterion's default


def _random_inputs(num_groups, counts, num_queries, num_classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (num_groups, len(counts), num_queries)
    logits = torch.randn(*shape, num_classes, generator=gen, dtype=torch.float64)
    centers = 0.2 + 0.6 * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    sizes = 0.05 + 0.35 * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    boxes = torch.cat([centers, sizes], dim=-1)
    targets = []
    for n in counts:
        c = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
        s = 0.05 + 0.35 * torch.rand(n, 2, generator=gen)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        targets.append({"labels": labels, "boxes": torch.cat([c, s], dim=-1)})
    return logits, boxes, targets


def _corners(b: torch.Tensor) -> list[float]:
    cx, cy, w, h = (float(v) for v in b)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _giou(a: torch.Tensor, b: torch.Tensor, eps: float = GIOU_EPS) -> float:
    """GIoU of two cxcywh boxes, from the definition with detrex's eps on union and hull."""
    ax1, ay1, ax2, ay2 = _corners(a)
    bx1, by1, bx2, by2 = _corners(b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / (union + eps) - (hull - union) / (hull + eps)


def _focal(x: float, y: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Sigmoid focal loss of one logit, from the definition."""
    p = 1 / (1 + math.exp(-x))
    p_t = p if y else 1 - p
    alpha_t = alpha if y else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


def _reference_group_losses(logits, boxes, targets, matched, g, num_boxes, xyxy=False):
    """Unweighted (class, bbox, giou) losses of group g, image by image and pair by pair."""
    loss_class = loss_bbox = loss_giou = 0.0
    num_images, num_queries, num_classes = logits.shape[1:]
    for b in range(num_images):
        query_idx, target_idx = matched.of(g, b)
        pairs = list(zip(query_idx.tolist(), target_idx.tolist(), strict=True))
        label_of = {q: int(targets[b]["labels"][t]) for q, t in pairs}
        for q in range(num_queries):
            for k in range(num_classes):
                loss_class += _focal(float(logits[g, b, q, k]), label_of.get(q) == k)
        for q, t in pairs:
            pred, tgt = boxes[g, b, q], targets[b]["boxes"][t].double()
            if xyxy:
                diff = [p - r for p, r in zip(_corners(pred), _corners(tgt), strict=True)]
            else:
                diff = (pred - tgt).tolist()
            loss_bbox += sum(abs(d) for d in diff)
            loss_giou += 1 - _giou(pred, tgt)
    return [v / num_boxes for v in (loss_class, loss_bbox, loss_giou)]


def test_equals_reference_loop():
    counts, group_stage = [2, 0, 4], [0, 1, 1]
    logits, boxes, targets = _random_inputs(3, counts, 5, 4)
    matcher = HungarianMatcher()
    criterion = SetCriterion(4, matcher)

    losses = criterion(logits, boxes, targets, group_stage)

    pairs = matcher(logits, boxes, targets)
    per_group = [_reference_group_losses(logits, boxes, targets, pairs, g, 6) for g in range(3)]
    assert sorted(losses) == sorted(f"{n}_s{s}" for n in NAMES for s in (0, 1))
    for j, name in enumerate(NAMES):
        w = DEFAULT_WEIGHTS[name]
        assert losses[f"{name}_s0"].item() == pytest.approx(w * per_group[0][j], abs=1e-6)
        # Stage 1 holds groups 1 and 2: its loss is their sum.
        expected = w * (per_group[1][j] + per_group[2][j])
        assert losses[f"{name}_s1"].item() == pytest.approx(expected, abs=1e-6)


def test_xyxy_l1_equals_reference_loop():
    logits, boxes, targets = _random_inputs(2, [3, 1], 4, 3, seed=1)
    matcher = HungarianMatcher(l1_box_format="xyxy")
    criterion = SetCriterion(3, matcher, l1_box_format="xyxy")

    losses = criterion(logits, boxes, targets, [0, 1])

    pairs = matcher(logits, boxes, targets)
    for g in range(2):
        ref = _reference_group_losses(logits, boxes, targets, pairs, g, 4, xyxy=True)
        assert losses[f"loss_bbox_s{g}"].item() == pytest.approx(5.0 * ref[1], abs=1e-6)


def _one_box_case():
    """One group, image, query and class; logit 0 (p = 0.5) matched to a box shifted by 0.1."""
    logits = torch.zeros(1, 1, 1, 1)
    boxes = torch.tensor([[[[0.5, 0.5, 0.2, 0.2]]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]])}]
    return logits, boxes, targets


def test_hand_computed_losses_and_weights():
    logits, boxes, targets = _one_box_case()
    # Focal at p = 0.5 for the positive class: 0.25 * 0.5**2 * ln 2.
    focal = 0.25 * 0.25 * math.log(2)
    # The boxes overlap on a 0.1 x 0.2 strip: IoU = 0.02 / (0.06 + eps), 1/3 without the eps; the
    # hull (0.3 x 0.2) equals the union, so GIoU = IoU and the GIoU loss is 1 - IoU (2/3 without
    # the eps; the eps adds 0.02 * 1e-6 / 0.06**2 = 5.6e-6). cxcywh L1 = 0.1, xyxy L1 = 0.2.
    expected = {"loss_class": focal, "loss_bbox": 0.1, "loss_giou": 1 - 0.02 / (0.06 + GIOU_EPS)}

    default = SetCriterion(1, HungarianMatcher())(logits, boxes, targets, [0])
    weights = {"loss_class": 2.0, "loss_bbox": 0.5, "loss_giou": 3.0}
    scaled = SetCriterion(1, HungarianMatcher(), weight_dict=weights)(logits, boxes, targets, [0])
    xyxy = SetCriterion(1, HungarianMatcher(), l1_box_format="xyxy")(logits, boxes, targets, [0])

    for name, value in expected.items():
        assert default[f"{name}_s0"].item() == pytest.approx(DEFAULT_WEIGHTS[name] * value)
        assert scaled[f"{name}_s0"].item() == pytest.approx(weights[name] * value)
    assert xyxy["loss_bbox_s0"].item() == pytest.approx(5.0 * 0.2)


def _small_box_case():
    """One query [0, 0, 0.01, 0.01] matched to [0.005, 0.005, 0.015, 0.015] (xyxy), as cxcywh."""
    logits = torch.zeros(1, 1, 1, 1)
    boxes = torch.tensor([[[[0.005, 0.005, 0.01, 0.01]]]], dtype=torch.float64)
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.01, 0.01, 0.01, 0.01]])}]
    return logits, boxes, targets


def test_giou_loss_takes_detrex_eps():
    # inter 2.5e-5, union 1.75e-4, hull 2.25e-4 (see test_matcher): GIoU = 25/176 - 25/113 with
    # detrex's eps, 1/7 - 2/9 = -5/63 with torchvision's. One box: num_boxes = 1, weight 2.
    logits, boxes, targets = _small_box_case()

    default = SetCriterion(1, HungarianMatcher())(logits, boxes, targets, [0])
    plain = SetCriterion(1, HungarianMatcher(giou_eps=0.0), giou_eps=0.0)(
        logits, boxes, targets, [0]
    )

    assert default["loss_giou_s0"].item() == pytest.approx(2 * (1 - (25 / 176 - 25 / 113)))
    assert plain["loss_giou_s0"].item() == pytest.approx(2 * (1 + 5 / 63))
    # The eps raises this GIoU by 1.7e-4 (it shrinks the hull penalty more than the IoU), so the
    # weighted loss drops by 3.4e-4 out of 2.16.
    difference = default["loss_giou_s0"].item() - plain["loss_giou_s0"].item()
    assert difference == pytest.approx(2 * (-5 / 63 - (25 / 176 - 25 / 113)), rel=1e-4)
    assert difference == pytest.approx(-3.4e-4, abs=1e-5)


def test_elementwise_giou_is_the_diagonal_of_the_pairwise_one():
    _, boxes, _ = _random_inputs(1, [0], 6, 1, seed=5)
    a = box_ops.box_cxcywh_to_xyxy(boxes[0, 0])
    b = a.flip(0) + 0.01
    for eps in (0.0, GIOU_EPS):
        pairwise = box_ops.generalized_box_iou(a, b, eps=eps)
        assert torch.equal(box_ops.elementwise_generalized_box_iou(a, b, eps=eps), pairwise.diag())


def test_six_stages_give_eighteen_keys():
    group_stage = [0, 1, 1, 2, 2, 2] + [3] * 5 + [4] * 8 + [5] * 13
    logits, boxes, targets = _random_inputs(32, [2, 1], 3, 2, seed=2)

    losses = SetCriterion(2, HungarianMatcher())(logits, boxes, targets, group_stage)

    assert sorted(losses) == sorted(f"{n}_s{s}" for n in NAMES for s in range(6))
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_empty_targets_everywhere():
    logits = torch.zeros(2, 2, 3, 4, requires_grad=True)
    boxes = torch.full((2, 2, 3, 4), 0.5, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2

    losses = SetCriterion(4, HungarianMatcher())(logits, boxes, targets, [0, 1])

    # Every one of the 2 * 3 * 4 logits of a group is a negative at p = 0.5:
    # 0.75 * 0.5**2 * ln 2 each, divided by num_boxes clamped from 0 to 1.
    negative = 0.75 * 0.25 * math.log(2)
    for s in (0, 1):
        assert losses[f"loss_class_s{s}"].item() == pytest.approx(24 * negative)
        assert losses[f"loss_bbox_s{s}"].item() == 0.0
        assert losses[f"loss_giou_s{s}"].item() == 0.0
    sum(losses.values()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert boxes.grad is not None and torch.equal(boxes.grad, torch.zeros_like(boxes))


def test_gradients_reach_matched_boxes_only():
    logits, boxes, targets = _random_inputs(2, [2, 1], 4, 3, seed=3)
    boxes.requires_grad_(True)
    matcher = HungarianMatcher()

    losses = SetCriterion(3, matcher)(logits, boxes, targets, [0, 1])
    sum(losses.values()).backward()

    matched = torch.zeros(boxes.shape[:3], dtype=torch.bool)
    pairs = matcher(logits, boxes.detach(), targets)
    matched[pairs.group, pairs.image, pairs.query] = True
    assert (boxes.grad.abs().sum(-1) > 0).eq(matched).all()


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    # Pretend to be one of 2 ranks whose peer has 5 boxes: num_boxes = (1 + 5) / 2 = 3.
    monkeypatch.setattr(criterion_module, "all_reduce_sum", lambda t: t + 5)
    monkeypatch.setattr(criterion_module, "get_world_size", lambda: 2)
    logits, boxes, targets = _one_box_case()

    losses = SetCriterion(1, HungarianMatcher())(logits, boxes, targets, [0])

    assert losses["loss_bbox_s0"].item() == pytest.approx(5.0 * 0.1 / 3)


def test_invalid_arguments():
    logits, boxes, targets = _one_box_case()
    criterion = SetCriterion(1, HungarianMatcher())
    with pytest.raises(ValueError, match="group_stage has 2 entries .* 1 query groups"):
        criterion(logits, boxes, targets, [0, 1])
    with pytest.raises(ValueError, match="num_classes=3"):
        SetCriterion(3, HungarianMatcher())(logits, boxes, targets, [0])
    with pytest.raises(ValueError, match="loss_mask"):
        SetCriterion(1, HungarianMatcher(), weight_dict={**DEFAULT_WEIGHTS, "loss_mask": 1.0})
    with pytest.raises(ValueError, match="'xywh'"):
        SetCriterion(1, HungarianMatcher(), l1_box_format="xywh")
    with pytest.raises(ValueError, match="giou_eps must be non-negative, got -0.5"):
        SetCriterion(1, HungarianMatcher(), giou_eps=-0.5)


def test_bfloat16_predictions_give_float32_losses():
    logits, boxes, targets = _random_inputs(2, [2, 1], 4, 3, seed=4)
    logits = logits.bfloat16().requires_grad_(True)
    boxes = boxes.bfloat16().requires_grad_(True)

    losses = SetCriterion(3, HungarianMatcher())(logits, boxes, targets, [0, 1])
    sum(losses.values()).backward()

    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert logits.grad.dtype == torch.bfloat16 and boxes.grad.dtype == torch.bfloat16


def test_non_finite_predictions_give_a_non_finite_loss_not_a_matcher_error():
    # A raise inside the matcher would leave the other DDP ranks waiting in backward; a
    # non-finite loss reaches the trainer's check, which stops every rank together.
    logits, boxes, targets = _random_inputs(2, [2, 1], 3, 2, seed=3)
    boxes = boxes.detach().clone()
    boxes[1, 0, 0] = float("nan")
    logits = logits.detach().clone()
    logits[1, 1, 2, 0] = float("inf")

    losses = SetCriterion(2, HungarianMatcher())(logits, boxes, targets, [0, 1])

    assert all(torch.isfinite(losses[f"{n}_s0"]) for n in NAMES)  # group 0 is clean
    assert not all(torch.isfinite(losses[f"{n}_s1"]) for n in NAMES)
