"""HybridEncoder (RT-DETRv2's neck): shapes, both input forms, gradients, named errors.

Its numerics against the official module are recorded in docs/rtdetrv2_notes.md.
"""

from __future__ import annotations

import pytest
import torch

from sqr.modeling.neck import HybridEncoder

NAMES = ("res3", "res4", "res5")


def _encoder(**kwargs) -> HybridEncoder:
    torch.manual_seed(0)
    return HybridEncoder(
        in_channels=(8, 16, 32), hidden_dim=16, num_heads=2, dim_feedforward=32, **kwargs
    )


def _levels() -> list[torch.Tensor]:
    torch.manual_seed(1)
    # Strides 8, 16, 32 of a 128 x 96 image; the last level is not square (AIFI's quirk).
    return [torch.randn(2, 8, 16, 12), torch.randn(2, 16, 8, 6), torch.randn(2, 32, 4, 3)]


def test_every_level_comes_out_at_hidden_dim_and_its_own_size() -> None:
    outputs = _encoder().eval()(_levels())
    assert [tuple(o.shape) for o in outputs] == [(2, 16, 16, 12), (2, 16, 8, 6), (2, 16, 4, 3)]


def test_named_levels_give_the_same_outputs_as_a_sequence() -> None:
    plain, named = _encoder().eval(), _encoder(in_features=NAMES).eval()
    named.load_state_dict(plain.state_dict())
    levels = _levels()
    for a, b in zip(plain(levels), named(dict(zip(NAMES, levels, strict=True))), strict=True):
        assert torch.equal(a, b)


def test_the_wrong_input_form_is_named() -> None:
    with pytest.raises(TypeError, match=r"HybridEncoder\(in_features=None\) takes a sequence"):
        _encoder()(dict(zip(NAMES, _levels(), strict=True)))
    with pytest.raises(TypeError, match=r"takes a dict, got list"):
        _encoder(in_features=NAMES)(_levels())


def test_every_parameter_gets_a_gradient() -> None:
    encoder = _encoder().train()
    sum(o.square().mean() for o in encoder(_levels())).backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
