"""Checkpoints that sqr wrote before AdaMixer's decoder stages were named ``layers`` load."""

import torch

from sqr.modeling.converters import convert, detect_format
from sqr.modeling.converters.sqr_legacy import is_sqr_legacy


def test_adamixer_stage_names_map_to_layers_and_the_rest_is_kept():
    state = {
        "backbone.conv1.weight": torch.zeros(1),
        "decoder.stages.0.attention.in_proj_weight": torch.ones(2),
        "decoder.stages.11.norm.bias": torch.full((3,), 2.0),
        "query_generator.content.weight": torch.ones(1),
    }
    assert detect_format(state) == "sqr_legacy"
    out = convert(state, "sqr_legacy")
    assert list(out) == [
        "backbone.conv1.weight",
        "decoder.layers.0.attention.in_proj_weight",
        "decoder.layers.11.norm.bias",
        "query_generator.content.weight",
    ]
    assert out["decoder.layers.11.norm.bias"] is state["decoder.stages.11.norm.bias"]


def test_todays_names_are_not_legacy():
    state = {"backbone.conv1.weight": torch.zeros(1), "decoder.layers.0.x": torch.ones(1)}
    assert not is_sqr_legacy(state)
    assert detect_format(state) is None
