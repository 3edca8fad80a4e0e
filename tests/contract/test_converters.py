"""Every checkpoint format of a table entry converts to that detector: the foreign checkpoint
is recognised as its format, converts, loads strictly (names and shapes) into the full-size
recipe, and comes back out of the model with the same values under names that need no
conversion."""

from __future__ import annotations

import pytest
import torch
from contract.foreign import foreign_checkpoint
from contract.models import CONFIGS

from sqr.config import LazyConfig, instantiate
from sqr.modeling import table
from sqr.modeling.converters import convert, detect_format, is_native

# Each format on the entry's recipe and on every variant (the official key set of each depth).
CASES = [
    (entry, recipe.config, fmt)
    for entry in table.DETECTORS
    for recipe in (entry, *entry.variants)
    for fmt in entry.formats
]


@pytest.mark.parametrize(
    ("entry", "config", "fmt"),
    CASES,
    ids=[f"{config.removesuffix('.py')}-{fmt}" for _, config, fmt in CASES],
)
def test_format_round_trip(entry: table.DetectorEntry, config: str, fmt: str) -> None:
    cfg = LazyConfig.load(str(CONFIGS / config))
    state, overrides = foreign_checkpoint(fmt, cfg.model)
    assert detect_format(state) == fmt
    assert not is_native(state)
    converted = convert(state, fmt)
    assert is_native(converted)
    LazyConfig.apply_overrides(cfg, overrides)
    with torch.device("meta"):  # full-size shapes without allocating the recipe's weights
        model = instantiate(cfg.model)
    result = model.load_state_dict(converted, strict=True, assign=True)  # checks every shape
    assert not result.missing_keys and not result.unexpected_keys
    back = model.state_dict()
    assert back.keys() == converted.keys()
    for key, value in converted.items():
        # The AdaMixer key set is shapes only (meta tensors: 100M+ parameters at full size).
        assert back[key].shape == value.shape, key
        assert value.is_meta or torch.equal(back[key], value), key
    assert detect_format(back) is None and is_native(back)
    assert {key.split(".")[0] for key in back} == entry.native_modules
