"""Multi-scale deformable attention against a per-level, per-head reference written here.

The reference samples with explicit bilinear interpolation (four corners, zero outside the map,
pixel centres at half-integers: ``grid_sample``'s ``align_corners=False``), one level, head and
point at a time, so it shares no code with the module's ``grid_sample`` path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import TINY_DEFORMABLE_DETR, TINY_DINO
from torch import nn

from sqr.config import LazyConfig, instantiate
from sqr.layers import ms_deform_attn
from sqr.layers.ms_deform_attn import (
    MultiScaleDeformableAttention,
    ms_deform_attn_sample,
    resolve_backend,
    set_backend,
)

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(6, 9), (3, 5), (2, 2)]  # non-square levels, finest first
HEADS, POINTS, CHANNELS = 2, 3, 8


def bilinear(value_map: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
    """value_map [B, H, W, D], location [B, N, 2] (x, y in [0, 1] of the map) -> [B, N, D]."""
    batch, height, width, channels = value_map.shape
    x = location[..., 0] * width - 0.5  # pixel (i, j) is centred at (j + 0.5, i + 0.5) / size
    y = location[..., 1] * height - 0.5
    x0, y0 = x.floor(), y.floor()
    flat = value_map.reshape(batch, height * width, channels)
    out = torch.zeros(*location.shape[:2], channels, dtype=value_map.dtype)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long()
            corner = torch.gather(flat, 1, index[..., None].expand(-1, -1, channels))
            out = out + (weight * inside)[..., None] * corner
    return out


def reference_msda(module, query, value, reference, padding, query_pos):
    """The module's computation spelled out; references and query_pos given per query."""
    batch, num_queries, channels = query.shape
    head_dim = channels // HEADS
    q = query + query_pos
    v = module.value_proj(value).masked_fill(padding[..., None], 0.0)
    offsets = module.sampling_offsets(q).view(batch, num_queries, HEADS, len(SHAPES), POINTS, 2)
    weights = module.attention_weights(q).view(batch, num_queries, HEADS, -1).softmax(-1)
    weights = weights.view(batch, num_queries, HEADS, len(SHAPES), POINTS)
    heads_out = [torch.zeros(batch, num_queries, head_dim) for _ in range(HEADS)]
    start = 0
    for level, (height, width) in enumerate(SHAPES):
        level_value = v[:, start : start + height * width].view(batch, height, width, channels)
        for head in range(HEADS):
            head_map = level_value[..., head * head_dim : (head + 1) * head_dim]
            for point in range(POINTS):
                offset = offsets[:, :, head, level, point]
                ref = reference[:, :, level]
                if ref.shape[-1] == 2:  # offsets in pixels of this level
                    location = ref + offset / torch.tensor([width, height])
                else:  # offsets in units of half the box over the number of points
                    location = ref[..., :2] + offset / POINTS * ref[..., 2:] * 0.5
                sample = bilinear(head_map, location)
                heads_out[head] = heads_out[head] + weights[:, :, head, level, point, None] * sample
        start += height * width
    return query + module.output_proj(torch.cat(heads_out, -1))


def make_module(seed: int = 0) -> MultiScaleDeformableAttention:
    torch.manual_seed(seed)
    module = MultiScaleDeformableAttention(CHANNELS, HEADS, len(SHAPES), POINTS, dropout=0.0)
    with torch.no_grad():  # away from the init: offsets of a few pixels, uneven weights
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return module


def make_inputs(num_queries: int, ref_dim: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    batch = 2
    length = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, length, CHANNELS, generator=gen)
    query = torch.randn(batch, num_queries, CHANNELS, generator=gen)
    query_pos = torch.randn(batch, num_queries, CHANNELS, generator=gen)
    reference = torch.rand(batch, num_queries, len(SHAPES), ref_dim, generator=gen)
    if ref_dim == 4:
        reference[..., 2:] = reference[..., 2:] * 0.5 + 0.05  # box sizes
    # Image 1 is padded at the bottom and right of every level.
    masks = []
    for height, width in SHAPES:
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
        mask[1, (height + 1) // 2 :, :] = True
        mask[1, :, (width + 1) // 2 :] = True
        masks.append(mask.flatten(1))
    return query, value, reference, torch.cat(masks, 1), query_pos


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_matches_per_level_per_head_reference(ref_dim: int) -> None:
    module = make_module()
    query, value, reference, padding, query_pos = make_inputs(7, ref_dim)
    maps = module.project_value(value, SHAPES, padding)
    out = module(query, maps, reference, query_pos)
    expected = reference_msda(module, query, value, reference, padding, query_pos)
    assert relative_error(out, expected) <= 1e-5


def test_groups_share_value_references_and_position() -> None:
    # Three groups of 5 queries on the query axis, with one [B, 5, ...] reference and position
    # tensor for all of them: the same as giving every query its own copy.
    module = make_module(seed=2)
    query, value, reference, padding, query_pos = make_inputs(5, 2, seed=3)
    grouped_query = torch.cat([query, query.flip(1), query * 0.5], dim=1)
    maps = module.project_value(value, SHAPES, padding)
    out = module(grouped_query, maps, reference, query_pos)
    expected = reference_msda(
        module,
        grouped_query,
        value,
        reference.repeat(1, 3, 1, 1),
        padding,
        query_pos.repeat(1, 3, 1),
    )
    assert out.shape == grouped_query.shape
    assert relative_error(out, expected) <= 1e-5


def test_gradients_reach_value_offsets_and_weights() -> None:
    module = make_module(seed=4)
    query, value, reference, padding, query_pos = make_inputs(6, 2, seed=5)
    value.requires_grad_(True)
    grads = []
    for compute in ("module", "reference"):
        module.zero_grad()
        value.grad = None
        if compute == "module":
            out = module(query, module.project_value(value, SHAPES, padding), reference, query_pos)
        else:
            out = reference_msda(module, query, value, reference, padding, query_pos)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append(
            {
                "value": value.grad.clone(),
                "offsets": module.sampling_offsets.weight.grad.clone(),
                "weights": module.attention_weights.weight.grad.clone(),
                "value_proj": module.value_proj.weight.grad.clone(),
            }
        )
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0, f"no gradient reaches {name}"
        assert relative_error(grads[0][name], grads[1][name]) <= 1e-4, name


def test_padding_is_never_read() -> None:
    module = make_module(seed=6)
    query, value, reference, padding, query_pos = make_inputs(6, 2, seed=7)
    out = module(query, module.project_value(value, SHAPES, padding), reference, query_pos)
    changed = value.masked_fill(padding[..., None], 1e3)
    out_changed = module(
        query, module.project_value(changed, SHAPES, padding), reference, query_pos
    )
    assert torch.equal(out, out_changed)


def test_locations_outside_the_map_read_zero() -> None:
    value = torch.ones(1, 6, 1, 1)  # a 2x3 map, one head, one channel
    locations = torch.tensor([-0.5, 0.5, 1.5, 0.5]).view(1, 2, 1, 1, 1, 2)  # left, right of it
    weights = torch.ones(1, 2, 1, 1, 1)
    out = ms_deform_attn_sample(value, [(2, 3)], locations, weights)
    assert torch.equal(out, torch.zeros(1, 2, 1))


def test_autocast_samples_in_float32() -> None:
    module = make_module(seed=8)
    query, value, reference, padding, query_pos = make_inputs(6, 4, seed=9)
    expected = module(query, module.project_value(value, SHAPES, padding), reference, query_pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = module.project_value(value, SHAPES, padding)
        out = module(query, maps, reference, query_pos)
    # The value stays in the projection's dtype (read once, upcast where it is sampled).
    assert maps.value.dtype == torch.bfloat16
    # Only the bf16 projections differ from the float32 run; the sampling itself did not.
    assert relative_error(out.float(), expected) < 5e-2


def test_project_value_keeps_the_projection_layout() -> None:
    # [B, S, C] viewed as [B, S, M, D]: the projection's own storage, no copy.
    module = make_module()
    _, value, _, padding, _ = make_inputs(6, 2)
    projected = module.project_value(value, SHAPES, None)
    assert projected.value.shape == (2, value.shape[1], HEADS, CHANNELS // HEADS)
    assert projected.value.is_contiguous()
    assert projected.spatial_shapes == tuple(SHAPES)
    assert torch.equal(projected.value.flatten(2), module.value_proj(value))


def test_backend_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQR_MSDA", raising=False)
    assert resolve_backend(None) == "auto"
    monkeypatch.setenv("SQR_MSDA", "pytorch")
    assert resolve_backend(None) == "pytorch"
    assert resolve_backend("triton") == "triton"
    assert MultiScaleDeformableAttention(8, 2, 1, 1).backend == "pytorch"
    assert MultiScaleDeformableAttention(8, 2, 1, 1, backend="auto").backend == "auto"
    monkeypatch.setenv("SQR_MSDA", "cuda")
    with pytest.raises(ValueError, match="SQR_MSDA='cuda': choose one of auto, triton, pytorch"):
        resolve_backend(None)
    with pytest.raises(ValueError, match="backend='fast'"):
        MultiScaleDeformableAttention(8, 2, 1, 1, backend="fast")


def test_set_backend_reaches_every_layer() -> None:
    model = nn.Sequential(
        MultiScaleDeformableAttention(8, 2, 1, 1, backend="auto"),
        nn.Sequential(MultiScaleDeformableAttention(8, 2, 1, 1, backend="auto")),
    )
    assert set_backend(model, "pytorch") == 2
    assert [m.backend for m in (model[0], model[1][0])] == ["pytorch", "pytorch"]
    with pytest.raises(ValueError, match="backend='gpu'"):
        set_backend(model, "gpu")


def test_the_pytorch_backend_never_looks_for_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    # Even where auto would try the kernels (the interpreter flag), "pytorch" does not.
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def looked_up(*args):
        raise AssertionError("the Triton path was considered")

    monkeypatch.setattr(ms_deform_attn, "why_not_triton", looked_up)
    module = make_module()
    module.backend = "pytorch"
    query, value, reference, padding, query_pos = make_inputs(4, 2)
    out = module(query, module.project_value(value, SHAPES, padding), reference, query_pos)
    expected = reference_msda(module, query, value, reference, padding, query_pos)
    assert relative_error(out, expected) <= 1e-5


def test_shape_errors_name_the_problem() -> None:
    module = make_module()
    query, value, reference, padding, query_pos = make_inputs(6, 2)
    with pytest.raises(ValueError, match="do not cover"):
        module.project_value(value[:, 1:], SHAPES, padding[:, 1:])
    maps = module.project_value(value, SHAPES, padding)
    with pytest.raises(ValueError, match="whole number"):
        module(query, maps, reference[:, :4], query_pos)


@pytest.mark.parametrize(
    ("config", "tiny"),
    [
        ("deformable_detr_r50_50ep.py", TINY_DEFORMABLE_DETR),
        ("dino_r50_4scale_12ep.py", TINY_DINO),
    ],
)
def test_the_config_key_sets_every_layer(monkeypatch: pytest.MonkeyPatch, config, tiny) -> None:
    # model.msda_backend wins over $SQR_MSDA, which the layers read when nothing is set.
    monkeypatch.setenv("SQR_MSDA", "triton")
    cfg = LazyConfig.load(str(ROOT / "projects/sqr/configs" / config))
    default = instantiate(LazyConfig.apply_overrides(cfg, list(tiny)).model)
    chosen = instantiate(
        LazyConfig.apply_overrides(cfg, [*tiny, "model.msda_backend=pytorch"]).model
    )
    for model, expected in ((default, "triton"), (chosen, "pytorch")):
        layers = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
        assert len(layers) == 8  # the tiny encoder's 2 layers and the recipe's 6 decoder ones
        assert {m.backend for m in layers} == {expected}
