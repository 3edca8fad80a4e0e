"""AdaMixer's operators against per-point and per-query references written here."""

from __future__ import annotations

import math

import pytest
import torch

from sqr.layers.adamixer_ops import (
    AdaptiveMixing,
    AdaptiveSampling,
    box_iof,
    level_weights,
    refine_xyzr,
    sampling_3d,
    xyxy_to_xyzr,
    xyzr_position_embedding,
    xyzr_to_xyxy,
)


def bilinear_zero_padded(feature: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """Value of ``feature`` [C, H, W] at pixel coordinates (u, v) where pixel centres sit at
    integers; samples outside the map read 0."""
    channels, height, width = feature.shape
    u0, v0 = math.floor(u), math.floor(v)
    out = torch.zeros(channels, dtype=torch.float64)
    for dv in (0, 1):
        for du in (0, 1):
            x, y = u0 + du, v0 + dv
            weight = (1 - abs(u - x)) * (1 - abs(v - y))
            if 0 <= x < width and 0 <= y < height:
                out += weight * feature[:, y, x].double()
    return out


def sample_one_point(features, strides, groups, b, g, x, y, z, tau=2.0) -> torch.Tensor:
    """One point of sampling group ``g`` of image ``b``: the per-level samples of its channel
    group, blended with ``softmax(-(z - log2 stride)^2 / tau)``."""
    logits = torch.tensor([-((z - math.log2(s)) ** 2) / tau for s in strides], dtype=torch.float64)
    weights = logits.softmax(0)
    out = 0
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        channels = feature.shape[1] // groups
        block = feature[b, g * channels : (g + 1) * channels]
        # A pixel coordinate of the canvas maps to (x / stride - 0.5) on the level: pixel i of
        # the level covers canvas [i * stride, (i + 1) * stride).
        out = out + weights[level] * bilinear_zero_padded(block, x / stride - 0.5, y / stride - 0.5)
    return out


def test_sampling_3d_matches_per_point_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, queries, groups, points, channels = 2, 3, 2, 5, 6
    strides = (4, 8, 16)
    height, width = 32, 48  # canvas in pixels
    features = [
        torch.randn(batch, channels, height // s, width // s, generator=gen) for s in strides
    ]
    xy = torch.rand(batch, queries, groups, points, 2, generator=gen)
    # Some points fall outside the canvas (zero padding) and z spans below and above the levels.
    xy = xy * torch.tensor([width + 16.0, height + 16.0]) - 8
    z = torch.rand(batch, queries, groups, points, 1, generator=gen) * 6 + 1
    pts = torch.cat([xy, z], dim=-1)
    out = sampling_3d(pts, features, strides)
    assert out.shape == (batch, queries, groups, points, channels // groups)
    for b in range(batch):
        for q in range(queries):
            for g in range(groups):
                for p in range(points):
                    x, y, zz = (float(v) for v in pts[b, q, g, p])
                    expected = sample_one_point(features, strides, groups, b, g, x, y, zz)
                    torch.testing.assert_close(
                        out[b, q, g, p].double(), expected, rtol=1e-5, atol=1e-5
                    )


def test_level_weights_by_hand() -> None:
    # z = log2(8) = 3: squared distances to log2(4, 8, 16, 32) = (1, 0, 1, 4), halved.
    weights = level_weights(torch.tensor([3.0]), (4, 8, 16, 32))[0]
    expected = torch.tensor([-0.5, 0.0, -0.5, -2.0]).softmax(0)
    torch.testing.assert_close(weights, expected)


def test_xyzr_boxes_by_hand() -> None:
    # A 4 x 16 box centred at (10, 20): z = log2(sqrt(64)) = 3, r = log2(16 / 4) = 2.
    xyxy = torch.tensor([[8.0, 12.0, 12.0, 28.0]])
    xyzr = xyxy_to_xyzr(xyxy)
    torch.testing.assert_close(xyzr, torch.tensor([[10.0, 20.0, 3.0, 2.0]]))
    torch.testing.assert_close(xyzr_to_xyxy(xyzr), xyxy)
    # Centre moves by delta * 2^z = delta * 8; z and r add their deltas.
    refined = refine_xyzr(xyzr, torch.tensor([[0.5, -0.25, 1.0, -2.0]]))
    torch.testing.assert_close(refined, torch.tensor([[14.0, 18.0, 4.0, 0.0]]))


def test_box_iof_by_hand() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 4.0, 2.0], [10.0, 10.0, 11.0, 11.0]])
    iof = box_iof(boxes)
    # Overlap of the first two is 2 x 2 = 4: 4 / 16 for the big box, 4 / 4 for the small one.
    expected = torch.tensor([[1.0, 0.25, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(iof, expected)


def test_xyzr_position_embedding_by_hand() -> None:
    # Two features per coordinate: frequency 1 for both, so [sin(c), cos(c)] per coordinate,
    # with x and y divided by 1000.
    xyzr = torch.tensor([500.0, 1000.0, 2.0, -1.0])
    embed = xyzr_position_embedding(xyzr, num_feats=2)
    coords = torch.tensor([0.5, 1.0, 2.0, -1.0])
    expected = torch.stack([coords.sin(), coords.cos()], dim=-1).flatten()
    torch.testing.assert_close(embed, expected)


@pytest.mark.parametrize("num_points", [4, 6])
def test_initial_sampling_points(num_points: int) -> None:
    sampling = AdaptiveSampling(embed_dim=8, num_groups=2, num_points=num_points)
    xyzr = xyxy_to_xyzr(torch.tensor([[[10.0, 20.0, 50.0, 40.0]]]))  # 40 x 20 box at (30, 30)
    points = sampling.sample_points(torch.randn(1, 1, 8), xyzr)[0, 0]  # [G, P, 3]
    # The offset layer starts with zero weights: points do not depend on the query, lie within
    # half a box of the centre and one level finer than the box (dz = -1).
    assert (points[..., 0] - 30).abs().max() <= 20 and (points[..., 1] - 30).abs().max() <= 10
    torch.testing.assert_close(points[..., 2], torch.full_like(points[..., 2], xyzr[0, 0, 2] - 1))
    if num_points == 4:  # a square number: a regular 2 x 2 grid at +-1/4 of the box
        offsets = (points[0, :, :2] - 30) / torch.tensor([40.0, 20.0])
        expected = torch.tensor([[-0.25, -0.25], [-0.25, 0.25], [0.25, -0.25], [0.25, 0.25]])
        torch.testing.assert_close(offsets, expected)


def mix_one_query(mixing: AdaptiveMixing, sampled: torch.Tensor, query: torch.Tensor):
    """One query: per group, channel mixing, LN + ReLU, spatial mixing, LN + ReLU; then the
    output projection and the residual."""
    c, p_in, p_out = mixing.channels, mixing.in_points, mixing.out_points
    params = mixing.parameter_generator(query)
    size = c * c + p_in * p_out
    outs = []
    for g in range(mixing.num_groups):
        block = params[g * size : (g + 1) * size]
        channel_mix = block[: c * c].view(c, c)
        spatial_mix = block[c * c :].view(p_out, p_in)
        x = sampled[g] @ channel_mix  # [P, c]
        x = torch.relu((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5))
        x = spatial_mix @ x  # [P_out, c]
        x = torch.relu((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5))
        outs.append(x.flatten())
    return query + mixing.out_proj(torch.cat(outs))


def test_adaptive_mixing_matches_per_query_reference() -> None:
    torch.manual_seed(0)
    mixing = AdaptiveMixing(embed_dim=12, feat_channels=8, num_groups=2, in_points=3, out_points=5)
    with torch.no_grad():  # the zero-initialised generator would make every query alike
        mixing.parameter_generator.weight.normal_(0, 0.1)
    sampled = torch.randn(2, 4, 2, 3, 4)
    query = torch.randn(2, 4, 12)
    out = mixing(sampled, query)
    for b in range(2):
        for q in range(4):
            expected = mix_one_query(mixing, sampled[b, q], query[b, q])
            torch.testing.assert_close(out[b, q], expected, rtol=1e-5, atol=1e-5)


def test_adaptive_mixing_starts_query_independent() -> None:
    mixing = AdaptiveMixing(embed_dim=12, feat_channels=8, num_groups=2, in_points=3, out_points=5)
    sampled = torch.randn(1, 1, 2, 3, 4).expand(1, 2, 2, 3, 4)
    query = torch.randn(1, 2, 12)
    # Zero generator weights: both queries mix their (equal) samples with the same parameters,
    # so the outputs differ by exactly the difference of the residuals.
    out = mixing(sampled, query)
    torch.testing.assert_close(out[0, 0] - query[0, 0], out[0, 1] - query[0, 1])
