"""tools/analyze_model.py: parameter and FLOP tables of a real detector config."""

from __future__ import annotations

import pytest
from helpers.tiny import TINY_DAB_DETR

from sqr.tools import analyze_model


def rows(table: str) -> dict[str, list[str]]:
    """The cells after the name of each row of a markdown table, by name."""
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()]
    return {row[0]: row[1:] for row in cells if row and not row[0].startswith((":", "name"))}


def test_parameter_and_flop_tables(capsys) -> None:
    tables = analyze_model.main(
        ["--config-file", "dab_detr_r50_50ep.py", "--height", "64", "--width", "80", *TINY_DAB_DETR]
    )
    assert set(tables) == {"parameter", "flop"}
    assert "flops of dab_detr_r50_50ep.py" in capsys.readouterr().out
    # By hand, in fvcore's units (one multiply-add is one flop, 3 significant digits).
    # conv1: 7x7, 3 -> 64 channels, stride 2: 64 * 3 * 49 = 9408 weights, each used at the
    # 32 x 40 output positions: 12_042_240 flops.
    # input_proj: 1x1, 512 -> 32 channels on the stride-32 map of 2 x 3 positions:
    # 512 * 32 + 32 = 16_416 parameters, 512 * 32 * 6 = 98_304 flops.
    # class_embed: 32 -> 5 linear, 165 parameters, 160 flops per query for 10 queries and 6
    # stages: 9600 flops. anchor_box_embed: 10 anchors x 4, no flops.
    parameters = rows(tables["parameter"])
    assert parameters["input_proj"] == ["16.4K"] and parameters["class_embed"] == ["0.2K"]
    assert parameters["anchor_box_embed"] == ["40"]
    flops = rows(tables["flop"].split("\n", 1)[1])
    assert flops["backbone.conv1"] == ["9.408K", "12.042M"]
    assert flops["input_proj"] == ["16.416K", "98.304K"]
    assert flops["class_embed"] == ["0.165K", "9.6K"]
    assert flops["anchor_box_embed"] == ["40", ""]


def test_bad_size_is_named() -> None:
    with pytest.raises(ValueError, match="--height must be positive, got 0"):
        analyze_model.main(["--config-file", "dab_detr_r50_50ep.py", "--height", "0"])


def test_deformable_attention_sampling_is_counted() -> None:
    from helpers.tiny import TINY_DEFORMABLE_DETR

    args = ["--config-file", "deformable_detr_r50_50ep.py", "--tasks", "flop", "--height", "64"]
    table = analyze_model.main([*args, "--width", "80", *TINY_DEFORMABLE_DETR])["flop"]
    assert "Uncounted operators: none" in table
    # The encoder's self-attention is deformable attention: linear layers and grid_sample.
    row = next(line for line in table.splitlines() if line.startswith("| encoder.layers.0.self"))
    assert row.split("|")[3].strip().endswith("M")  # e.g. "0.664M" flops
