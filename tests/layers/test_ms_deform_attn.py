"""Multi-scale deformable attention against a per-level, per-head reference written here.

The reference samples with explicit bilinear interpolation (four corners, zero outside the map,
pixel centres at half-integers: ``grid_sample``'s ``align_corners=False``), one level, head and
point at a time, so it shares no code with the module's ``grid_sample`` path.
"""

from __future__ import annotations

import pytest
import torch

from sqr.layers.ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn_sample

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
    value_map = torch.ones(1, 1, 2, 3)  # one head, one channel
    locations = torch.tensor([-0.5, 0.5, 1.5, 0.5]).view(1, 2, 1, 1, 1, 2)  # left, right of it
    weights = torch.ones(1, 2, 1, 1, 1)
    assert torch.equal(ms_deform_attn_sample([value_map], locations, weights), torch.zeros(1, 2, 1))


def test_autocast_samples_in_float32() -> None:
    module = make_module(seed=8)
    query, value, reference, padding, query_pos = make_inputs(6, 4, seed=9)
    expected = module(query, module.project_value(value, SHAPES, padding), reference, query_pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = module.project_value(value, SHAPES, padding)
        out = module(query, maps, reference, query_pos)
    assert all(m.dtype == torch.float32 for m in maps)
    # Only the bf16 projections differ from the float32 run; the sampling itself did not.
    assert relative_error(out.float(), expected) < 5e-2


def test_shape_errors_name_the_problem() -> None:
    module = make_module()
    query, value, reference, padding, query_pos = make_inputs(6, 2)
    with pytest.raises(ValueError, match="do not cover"):
        module.project_value(value[:, 1:], SHAPES, padding[:, 1:])
    maps = module.project_value(value, SHAPES, padding)
    with pytest.raises(ValueError, match="whole number"):
        module(query, maps, reference[:, :4], query_pos)
