"""RT-DETRv2: the v2 deformable attention against hand-written oracles, ``eval_idx``, the query
selection's anchors, the denoising slots and the class-agnostic selection. Shapes, SQR eval ==
baseline eval and the per-group chain oracle are the contract tests' (tests/contract/), which
check the table's RT-DETRv2 entry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from contract.models import CONFIGS
from helpers import detectors

from sqr.layers.ms_deform_attn_v2 import DeformableAttentionV2
from sqr.modeling import table
from sqr.modeling.denoising import ContrastiveDenoising
from sqr.modeling.detectors.rtdetrv2 import RTDETRDenoising, RTDETRQuerySelection

ENTRY = table.entry("RT-DETRv2-S R18vd")
SHAPES = ((4, 6), (2, 3), (1, 2))  # rectangular levels: x and y clamps differ


def build(*extra: str) -> torch.nn.Module:
    return detectors.build_detector(CONFIGS / ENTRY.config, [*ENTRY.tiny, *extra])


def batch() -> list[dict]:
    return detectors.detection_batch(
        [(64, 96), (64, 96)], [detectors.TWO_OBJECTS, detectors.ONE_OBJECT]
    )


def attention_inputs(points, method):
    torch.manual_seed(0)
    attn = DeformableAttentionV2(8, 2, len(SHAPES), points, method)
    with torch.no_grad():  # away from the init's symmetric offsets and uniform weights
        for p in attn.parameters():
            p.add_(torch.randn_like(p))
    memory = torch.randn(2, sum(h * w for h, w in SHAPES), 8)
    query = torch.randn(2, 3, 8)
    boxes = torch.rand(2, 3, 4) * 0.6 + 0.2
    return attn, memory, query, boxes


def oracle(attn, memory, query, boxes, sample):
    """RT-DETRv2's attention written out per query, head, level and point; ``sample(level_map
    [D, H, W], x, y)`` reads one location (normalised)."""
    value = attn.value_proj(memory)
    offsets = attn.sampling_offsets(query).view(2, 3, 2, -1, 2)
    weights = attn.attention_weights(query).view(2, 3, 2, -1).softmax(-1)
    out = torch.zeros(2, 3, 8)
    for b in range(2):
        for n in range(3):
            cx, cy, w, h = boxes[b, n].tolist()
            for m in range(2):
                k, start = 0, 0
                for (height, width), count in zip(SHAPES, attn.num_points, strict=True):
                    level = value[b, start : start + height * width, m * 4 : m * 4 + 4]
                    level = level.T.reshape(4, height, width)
                    start += height * width
                    for _ in range(count):
                        dx, dy = offsets[b, n, m, k].tolist()
                        x = cx + dx / count * w * 0.5
                        y = cy + dy / count * h * 0.5
                        out[b, n, m * 4 : m * 4 + 4] += weights[b, n, m, k] * sample(level, x, y)
                        k += 1
    return query + attn.output_proj(out)


def nearest(level: torch.Tensor, x: float, y: float) -> torch.Tensor:
    height, width = level.shape[1:]
    col = min(max(math.floor(x * width + 0.5), 0), width - 1)
    row = min(max(math.floor(y * height + 0.5), 0), height - 1)
    return level[:, row, col]


def bilinear(level: torch.Tensor, x: float, y: float) -> torch.Tensor:
    grid = torch.tensor([[[[2 * x - 1, 2 * y - 1]]]])
    return F.grid_sample(level[None], grid, align_corners=False)[0, :, 0, 0]


@pytest.mark.parametrize("points", [[1, 3, 2], 2], ids=["per_level", "uniform"])
def test_default_attention_is_bilinear_sampling_of_each_levels_points(points) -> None:
    # Levels with fewer points are padded with zero-weight points for the shared sampler.
    attn, memory, query, boxes = attention_inputs(points, "default")
    with torch.no_grad():
        got = attn(query, attn.project_value(memory, SHAPES), boxes)
        expected = oracle(attn, memory, query, boxes, bilinear)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_discrete_attention_reads_the_nearest_cell_and_freezes_the_offsets() -> None:
    attn, memory, query, boxes = attention_inputs([1, 3, 2], "discrete")
    with torch.no_grad():
        got = attn(query, attn.project_value(memory, SHAPES), boxes)
        expected = oracle(attn, memory, query, boxes, nearest)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not attn.sampling_offsets.weight.requires_grad
    assert attn.attention_weights.weight.requires_grad


def test_attention_rejects_a_points_list_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="one per level"):
        DeformableAttentionV2(8, 2, 3, [4, 4])


def test_eval_idx_runs_the_first_layers_only_as_a_decoder_truncated_by_hand() -> None:
    model = build("model.decoder.eval_idx=1").eval()
    truncated = build("model.decoder.num_stages=2")
    state = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith(("decoder.layers.2.", "class_embed.2.", "bbox_embed.2."))
    }
    truncated.load_state_dict(state)
    ran = []
    model.decoder.layers[2].register_forward_hook(lambda *args: ran.append(1))
    with torch.no_grad():
        logits, boxes, schedule = model.predict(batch())
        expected_logits, expected_boxes, _ = truncated.eval().predict(batch())
        detections = model(batch())
    assert not ran, "the layer after eval_idx ran in evaluation"
    assert schedule.num_stages == 2 and logits.shape[0] == boxes.shape[0] == 2
    assert torch.equal(logits, expected_logits) and torch.equal(boxes, expected_boxes)
    with torch.no_grad():
        expected = truncated(batch())
    for a, b in zip(detections, expected, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    # Training runs (and supervises) every layer.
    torch.manual_seed(0)
    losses = model.train()(batch())
    assert {"loss_class_s2", "loss_bbox_s2", "loss_giou_s2"} <= losses.keys()


def test_query_selection_anchors_are_rt_detrs() -> None:
    # RT-DETR's anchors written out: centre (i + 0.5) / size, side 0.05 * 2**level, in logit
    # space, +inf where any coordinate is outside (0.01, 0.99). The box head starts at zero, so
    # the proposals are the anchors themselves.
    shapes = [(2, 64), (4, 4), (2, 2)]  # 64 columns: the outer centres are within 0.01
    selection = RTDETRQuerySelection(8, 3, 5)
    memory = torch.randn(1, sum(h * w for h, w in shapes), 8)
    no_padding = torch.zeros(memory.shape[:2], dtype=torch.bool)
    scored = selection.propose(
        memory, no_padding, shapes, selection.class_head, selection.box_head, 5
    )
    anchors = torch.tensor(
        [
            [(x + 0.5) / width, (y + 0.5) / height, 0.05 * 2**level, 0.05 * 2**level]
            for level, (height, width) in enumerate(shapes)
            for y in range(height)
            for x in range(width)
        ]
    )
    valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1)
    assert (~valid).any()
    coords = scored.coords[0]
    torch.testing.assert_close(coords[valid], torch.log(anchors / (1 - anchors))[valid].float())
    assert torch.isinf(coords[~valid]).all()
    # The content comes from the selected tokens' projected memory, zero on invalid tokens.
    projected = selection.enc_output_norm(selection.enc_output(memory * valid[None, :, None]))
    torch.testing.assert_close(scored.memory, projected)
    _, _, content, reference = selection(memory, shapes)
    assert torch.equal(content, scored.chosen(scored.memory))
    assert not content.requires_grad and not reference.requires_grad


def test_denoising_unfilled_slots_get_rt_detrs_box_and_the_rest_is_contrastive_denoising() -> None:
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 2)},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.4]])},
    ]
    args = dict(num_classes=3, embed_dim=4, num_denoising=4, inverse_sigmoid_eps=1e-5)
    torch.manual_seed(0)
    ours = RTDETRDenoising(**args)
    torch.manual_seed(0)
    plain = ContrastiveDenoising(**args)
    torch.manual_seed(1)
    got = ours(targets, 5)
    torch.manual_seed(1)
    expected = plain(targets, 5)
    # Image 1 has one target of max 2: slots 1 (positive) and 3 (negative) of each group.
    empty = torch.zeros(got.boxes.shape[1], dtype=torch.bool)
    empty[1::2] = True
    assert torch.equal(got.boxes[0], expected.boxes[0])
    assert torch.equal(got.boxes[1, ~empty], expected.boxes[1, ~empty])
    # RT-DETR noises a zero box and takes its logit clamped at 1e-5.
    padded = got.boxes[1, empty]
    torch.testing.assert_close(
        padded, torch.full_like(padded, 1e-5 / (1 + 1e-5)), rtol=1e-6, atol=0
    )
    assert torch.equal(got.content, expected.content)


def test_agnostic_selection_scores_one_class_and_supervises_it_as_one() -> None:
    model = build("model.query_select_method=agnostic")
    assert model.query_selection.class_head.out_features == 1
    torch.manual_seed(0)
    losses = model.train()(batch())
    assert {"loss_class_enc", "loss_bbox_enc", "loss_giou_enc"} <= losses.keys()
    sum(losses.values()).backward()
    assert model.query_selection.class_head.weight.grad.abs().sum() > 0


def test_unknown_query_select_method_is_refused() -> None:
    with pytest.raises(ValueError, match="one2many"):
        RTDETRQuerySelection(8, 3, 5, "one2many")


def test_a_wider_encoder_feeds_the_decoder_through_its_input_projections() -> None:
    # RT-DETRv2-X: 384 encoder channels into a 256-wide decoder (here 48 into 32).
    (variant,) = [v for v in ENTRY.variants if v.config == "sqr_rtdetrv2_r101vd_6x.py"]
    model = detectors.build_detector(CONFIGS / variant.baseline_config, variant.tiny)
    assert model.encoder.hidden_dim == 48 and model.input_proj[0].conv.in_channels == 48
    assert model.input_proj[0].conv.out_channels == 32
    losses = model.train()(batch())
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        outputs = model.eval()(batch())
    assert outputs[0]["boxes"].shape == (10, 4)
