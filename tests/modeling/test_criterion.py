"""Tests for sqr.modeling.criterion."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import sqr.modeling.criterion as criterion_module
from sqr.config import LazyConfig, instantiate
from sqr.layers import box_ops
from sqr.modeling.criterion import PredictionSet, SetCriterion
from sqr.modeling.losses import MatchedInputs, VarifocalClassLoss
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.set_prediction import MatchedPairs, pad_targets

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


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _bce(x: float, y: float) -> float:
    """Binary cross-entropy of one logit against a soft target, from the definition."""
    return -(y * math.log(_sigmoid(x)) + (1 - y) * math.log(1 - _sigmoid(x)))


def _pairs(*rows: tuple[int, int, int, int]) -> MatchedPairs:
    """MatchedPairs from (group, image, query, target) rows."""
    return MatchedPairs(*torch.tensor(rows, dtype=torch.int64).T)


def _varifocal_case():
    """Two queries, two classes; query 0 assigned the class-1 target, IoU 1/3 (see
    test_hand_computed_losses_and_weights)."""
    logits = torch.tensor([[[[0.0, 1.0], [-1.0, 2.0]]]], requires_grad=True)
    boxes = torch.tensor([[[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]]], requires_grad=True)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]])}]
    return logits, boxes, targets, _pairs((0, 0, 0, 0))


def test_varifocal_hand_computed():
    logits, boxes, targets, pairs = _varifocal_case()
    labels, target_boxes, _, _ = pad_targets(targets, torch.device("cpu"))
    inputs = MatchedInputs(logits, boxes, labels, target_boxes, pairs)

    loss = VarifocalClassLoss(alpha=0.75, gamma=2.0)(inputs)

    # The matched entry (query 0, class 1): target = weight = IoU = 1/3. The others: target 0,
    # weight 0.75 * sigmoid(x) ** 2.
    iou = 1 / 3
    negatives = [0.0, -1.0, 2.0]
    expected = iou * _bce(1.0, iou) + sum(0.75 * _sigmoid(x) ** 2 * _bce(x, 0) for x in negatives)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    # The IoU target and the weights are detached: no gradient to the boxes, and a negative's
    # logit gets weight * sigmoid(x) (d/dx of -log(1 - sigmoid(x))), 0.75 * 0.5**2 * 0.5 at x = 0.
    assert boxes.grad is None
    assert logits.grad[0, 0, 0, 0].item() == pytest.approx(0.75 * 0.25 * 0.5)
    assert logits.grad[0, 0, 0, 1].item() == pytest.approx(iou * (_sigmoid(1.0) - iou))


def test_varifocal_replaces_the_class_term_under_its_key():
    # One box case: p = 0.5, IoU 1/3, so the loss is 1/3 * BCE(0, 1/3) = ln 2 / 3.
    logits, boxes, targets = _one_box_case()
    criterion = SetCriterion(1, HungarianMatcher(), losses={"loss_class": VarifocalClassLoss()})

    losses = criterion(logits, boxes, targets, [0])

    assert list(losses) == ["loss_class_s0", "loss_bbox_s0", "loss_giou_s0"]
    assert losses["loss_class_s0"].item() == pytest.approx(math.log(2) / 3, rel=1e-6)
    assert losses["loss_bbox_s0"].item() == pytest.approx(5.0 * 0.1)


def _area_loss(inputs: MatchedInputs) -> torch.Tensor:
    """A user-defined term: |predicted area - target area| of each matched box."""
    pred, target = inputs.matched_boxes
    return inputs.per_group((pred[:, 2] * pred[:, 3] - target[:, 2] * target[:, 3]).abs())


def test_a_term_added_by_config_reaches_the_losses_with_its_weight():
    config = Path(__file__).resolve().parents[2] / "projects/sqr/configs/models/dab_detr_r50.py"
    cfg = LazyConfig.load(str(config))
    cfg.model.criterion.num_classes = 1
    cfg.model.criterion.losses = {"loss_area": _area_loss}
    cfg.model.criterion.weight_dict = {**cfg.model.criterion.weight_dict, "loss_area": 3.0}
    criterion = instantiate(cfg.model.criterion)
    logits, boxes, targets = _one_box_case()
    targets[0]["boxes"][0, 2] = 0.3  # target area 0.06, predicted 0.04

    losses = criterion(logits, boxes, targets, [0])

    assert criterion.weight_dict["loss_area"] == 3.0
    assert list(losses) == ["loss_class_s0", "loss_bbox_s0", "loss_giou_s0", "loss_area_s0"]
    assert losses["loss_area_s0"].item() == pytest.approx(3.0 * 0.02)


def test_prediction_sets_keep_their_suffixes_and_are_matched_in_one_call(monkeypatch):
    logits, boxes, targets = _random_inputs(3, [2, 1], 4, 3, seed=6)
    binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
    criterion = SetCriterion(3, HungarianMatcher())
    dn_pairs = _pairs((0, 0, 1, 0), (0, 0, 2, 1), (0, 1, 3, 0))
    sets = [
        PredictionSet(logits[:2], boxes[:2], targets, [0, 1]),
        PredictionSet(logits[2:], boxes[2:], binary, [0], suffix="_enc"),
        PredictionSet(
            logits[2:], boxes[2:], targets, [4], "_dn_s{stage}", dn_pairs, num_boxes_factor=2
        ),
    ]
    calls = []
    match = HungarianMatcher.match

    def counting_match(self, problems):
        calls.append(len(problems))
        return match(self, problems)

    monkeypatch.setattr(HungarianMatcher, "match", counting_match)

    losses = criterion.set_losses(sets)

    assert calls == [2]  # the decoder's and the encoder's sets, together
    suffixes = ["_s0", "_s1", "_enc", "_dn_s4"]
    assert list(losses) == [f"{n}{s}" for s in suffixes for n in NAMES]
    decoder = criterion(logits[:2], boxes[:2], targets, [0, 1])
    encoder = criterion(logits[2:], boxes[2:], binary, [0])
    for n in NAMES:
        for s in ("_s0", "_s1"):
            assert torch.equal(losses[n + s], decoder[n + s])
        assert torch.equal(losses[f"{n}_enc"], encoder[f"{n}_s0"])
    # The fixed pairs: 3 of the 3 targets, each loss divided by num_boxes 3 * factor 2.
    fixed = criterion.set_losses(
        [PredictionSet(logits[2:], boxes[2:], targets, [4], pairs=dn_pairs)]
    )
    for n in NAMES:
        assert losses[f"{n}_dn_s4"].item() == pytest.approx(fixed[f"{n}_s4"].item() / 2)
    expected_l1 = sum(
        (boxes[2, b, q] - targets[b]["boxes"][t].double()).abs().sum().item()
        for _, b, q, t in [(0, 0, 1, 0), (0, 0, 2, 1), (0, 1, 3, 0)]
    )
    assert losses["loss_bbox_dn_s4"].item() == pytest.approx(5.0 * expected_l1 / 6)


def test_prediction_set_errors_are_named():
    logits, boxes, targets = _random_inputs(2, [1], 2, 1, seed=7)
    criterion = SetCriterion(1, HungarianMatcher())
    with pytest.raises(ValueError, match="'loss_class_s0'.*distinct suffixes"):
        criterion.set_losses(
            [
                PredictionSet(logits, boxes, targets, [0, 1]),
                PredictionSet(logits, boxes, targets, [0, 2]),
            ]
        )
    with pytest.raises(ValueError, match="suffix '_enc' has no \\{stage\\}.*\\[0, 1\\]"):
        criterion.set_losses([PredictionSet(logits, boxes, targets, [0, 1], suffix="_enc")])
    with pytest.raises(ValueError, match="'_{level}'"):
        PredictionSet(logits, boxes, targets, [0, 1], suffix="_{level}")
    with pytest.raises(ValueError, match="at least one prediction set"):
        criterion.set_losses([])
    with pytest.raises(ValueError, match="'loss_area'"):
        SetCriterion(1, HungarianMatcher(), losses={"loss_area": _area_loss})
    with pytest.raises(ValueError, match="losses\\['loss_area'\\] must be callable"):
        SetCriterion(1, HungarianMatcher(), losses={"loss_area": 1.0})
