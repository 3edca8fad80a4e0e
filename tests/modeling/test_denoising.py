"""DINO's contrastive denoising queries: layout, noise, attention mask and fixed assignment."""

from __future__ import annotations

import math

import pytest
import torch

from sqr.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.denoising import ContrastiveDenoising, denoising_attn_mask, denoising_losses
from sqr.modeling.matcher import HungarianMatcher

K, C = 5, 8  # classes, channels


def targets() -> list[dict[str, torch.Tensor]]:
    # Image 0: two targets, image 1: one (max_gt = 2), boxes well inside the image so that the
    # noise never reaches its border.
    return [
        {
            "labels": torch.tensor([1, 4]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.6, 0.1, 0.2]]),
        },
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.4, 0.2, 0.1]])},
    ]


def test_attention_mask_by_hand() -> None:
    # 2 denoising groups of 2 queries (one positive, one negative copy), then 2 matching
    # queries. Rows attend, columns are attended; 1 = blocked:
    #   a denoising query sees its own group and the matching queries;
    #   a matching query sees only the matching queries.
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(denoising_attn_mask(num_groups=2, group_size=2, num_queries=2), expected)
    # One group: nothing blocked among denoising queries; the matching ones never see them.
    one = denoising_attn_mask(num_groups=1, group_size=4, num_queries=3)
    assert not one[:4].any() and one[4:, :4].all() and not one[4:, 4:].any()


def test_layout_without_noise() -> None:
    dn = ContrastiveDenoising(K, C, num_denoising=5, label_noise_ratio=0.0, box_noise_scale=0.0)
    queries = dn(targets(), num_queries=3)
    # 5 // max_gt 2 = 2 groups of 2 * max_gt = 4 slots: [pos, pos, neg, neg] per group.
    assert (queries.num_groups, queries.group_size, queries.num_targets) == (2, 4, (2, 1))
    assert queries.content.shape == (2, 8, C) and queries.boxes.shape == (2, 8, 4)
    assert queries.attn_mask.shape == (11, 11)
    emb = dn.label_enc.weight
    for b, t in enumerate(targets()):
        n = len(t["labels"])
        for slot in range(8):
            within = slot % 2
            if within < n:  # a copy (positive or negative) of target `within`
                torch.testing.assert_close(queries.content[b, slot], emb[t["labels"][within]])
                torch.testing.assert_close(queries.boxes[b, slot], t["boxes"][within])
            else:  # unfilled: zero content, zero logit (0.5 everywhere)
                assert not queries.content[b, slot].any()
                assert torch.equal(queries.boxes[b, slot], torch.full((4,), 0.5))
    # Positive copy of target t in group g at g * group_size + t.
    (q0, t0), (q1, t1) = queries.indices()
    assert q0.tolist() == [0, 1, 4, 5] and t0.tolist() == [0, 1, 0, 1]
    assert q1.tolist() == [0, 4] and t1.tolist() == [0, 0]


def test_noise_is_detrex_draws_under_a_seed() -> None:
    dn = ContrastiveDenoising(K, C, num_denoising=4, label_noise_ratio=1.0, box_noise_scale=1.0)
    torch.manual_seed(3)
    queries = dn(targets(), num_queries=3)
    torch.manual_seed(3)
    again = dn(targets(), num_queries=3)
    assert torch.equal(queries.content, again.content) and torch.equal(queries.boxes, again.boxes)
    torch.manual_seed(4)
    assert not torch.equal(dn(targets(), num_queries=3).boxes, queries.boxes)

    # The same draws written out in detrex's order: the 3 targets of the batch repeated over
    # 2 groups x (positive, negative) blocks, 12 copies.
    labels = torch.tensor([1, 4, 2]).repeat(4)
    boxes = torch.cat([t["boxes"] for t in targets()]).repeat(4, 1)
    torch.manual_seed(3)
    redraw = torch.nonzero(torch.rand(12) < 0.5).view(-1)  # label_noise_ratio / 2
    labels[redraw] = torch.randint(0, K, (len(redraw),))
    sign = torch.randint(0, 2, (12, 4), dtype=torch.float32) * 2 - 1
    part = torch.rand(12, 4)
    negative = torch.tensor([0, 1, 0, 1]).repeat_interleave(3).bool()  # odd blocks
    part[negative] += 1
    half = (boxes[:, 2:] / 2).repeat(1, 2)
    noised = box_xyxy_to_cxcywh((box_cxcywh_to_xyxy(boxes) + part * sign * half).clamp(0, 1))

    # Copy (block j, image b, target t) sits at slot 2 * j + t of image b (max_gt = 2).
    image = torch.tensor([0, 0, 1]).repeat(4)
    slot = torch.tensor([0, 1, 0]).repeat(4) + 2 * torch.arange(4).repeat_interleave(3)
    torch.testing.assert_close(queries.content[image, slot], dn.label_enc.weight[labels])
    # The boxes enter through detrex's logit round trip: a box whose corners crossed (w or
    # h < 0) comes out with that side at the clamp, sigmoid(logit(1e-3)).
    entered = inverse_sigmoid(noised, 1e-3).sigmoid()
    torch.testing.assert_close(queries.boxes[image, slot], entered, rtol=0, atol=1e-6)

    # Positive copies move each corner by less than half the box size, negative ones by
    # between one half and one whole size.
    moved = (box_cxcywh_to_xyxy(noised) - box_cxcywh_to_xyxy(boxes)).abs()
    ratio = moved / half
    assert (ratio[~negative] < 1).all() and (ratio[negative] >= 1 - 1e-5).all()
    assert (ratio[negative] < 2).all()


def test_no_targets_or_no_denoising_gives_none() -> None:
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    assert ContrastiveDenoising(K, C)(empty, num_queries=3) is None
    assert ContrastiveDenoising(K, C, num_denoising=0)(targets(), num_queries=3) is None


def test_more_targets_than_denoising_queries_keeps_one_group() -> None:
    queries = ContrastiveDenoising(K, C, num_denoising=1)(targets(), num_queries=3)
    assert queries.num_groups == 1  # detrex: max(num_denoising // max_gt, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_denoising": -1}, "num_denoising"),
        ({"label_noise_ratio": 1.5}, "label_noise_ratio"),
        ({"box_noise_scale": -0.1}, "box_noise_scale"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ContrastiveDenoising(K, C, **kwargs)


def test_sync_free_label_noise_keeps_a_label_drawn_for_every_copy() -> None:
    dn = ContrastiveDenoising(
        K,
        C,
        num_denoising=4,
        label_noise_ratio=1.0,
        box_noise_scale=0.0,
        sync_free_label_noise=True,
    )
    torch.manual_seed(3)
    queries = dn(targets(), num_queries=3)
    # Replay the draws: 2 groups -> 4 copies of the 3 targets (image 0's two, then image 1's).
    torch.manual_seed(3)
    redrawn = torch.rand(12) < 0.5
    drawn = torch.randint(0, K, (12,))
    expected = torch.where(redrawn, drawn, torch.tensor([1, 4, 2]).repeat(4))
    assert 0 < redrawn.sum() < 12
    emb = dn.label_enc.weight
    for copy in range(4):
        for i, (b, t) in enumerate([(0, 0), (0, 1), (1, 0)]):
            label = expected[copy * 3 + i]
            assert torch.equal(queries.content[b, 2 * copy + t], emb[label]), (copy, b, t)


def test_prediction_set_assigns_each_positive_copy_its_target() -> None:
    dn = ContrastiveDenoising(K, C, num_denoising=5, label_noise_ratio=0.0, box_noise_scale=0.0)
    queries = dn(targets(), num_queries=3)
    # Two decoded groups (stages 0 and 2) that predict every query as its noise-free box, with
    # a logit of 0 everywhere: the L1 loss vanishes, the class loss is the focal loss at p = 0.5.
    boxes = queries.boxes.detach()[None].expand(2, -1, -1, -1)
    logits = torch.zeros(2, 2, 8, K)

    prediction_set = queries.prediction_set(logits, boxes, targets(), [0, 2])
    losses = denoising_losses(
        SetCriterion(K, HungarianMatcher()), logits, boxes, targets(), [0, 2], queries
    )

    assert (prediction_set.suffix, prediction_set.num_boxes_factor) == ("_dn_s{stage}", 2)
    for got, expected in zip(prediction_set.pairs, queries.pairs(2), strict=True):
        assert torch.equal(got, expected)
    assert sorted(losses) == sorted(
        f"loss_{n}_dn_s{s}" for n in ("class", "bbox", "giou") for s in (0, 2)
    )
    # Per group: 3 targets x 2 groups = 6 positives, the other 2 * 8 * 5 - 6 = 74 logits negative;
    # divided by num_boxes 3 * num_groups 2.
    positive = 0.25 * 0.25 * math.log(2)
    negative = 0.75 * 0.25 * math.log(2)
    for s in (0, 2):
        assert losses[f"loss_class_dn_s{s}"].item() == pytest.approx(
            (6 * positive + 74 * negative) / 6
        )
        assert losses[f"loss_bbox_dn_s{s}"].item() == pytest.approx(0.0, abs=1e-6)
        # GIoU of a box with itself is area / (area + eps): 1 - GIoU = eps / (area + eps) for
        # the areas 0.04, 0.02 (image 0) and 0.02 (image 1), each twice, weight 2.
        giou = 2 * sum(1e-6 / (area + 1e-6) for area in (0.04, 0.02, 0.02))
        assert losses[f"loss_giou_dn_s{s}"].item() == pytest.approx(2 * giou / 6, rel=1e-3)
