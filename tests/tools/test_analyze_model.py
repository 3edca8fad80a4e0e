"""tools/analyze_model.py: parameter and FLOP tables of a real detector config."""

from __future__ import annotations

import pytest
from helpers.tiny import TINY_DAB_DETR

from sqr.tools import analyze_model


def test_parameter_and_flop_tables(capsys) -> None:
    tables = analyze_model.main(
        ["--config-file", "dab_detr_r50_50ep.py", "--height", "64", "--width", "80", *TINY_DAB_DETR]
    )
    assert set(tables) == {"parameter", "flop"}
    assert "backbone" in tables["parameter"] and "decoder" in tables["parameter"]
    assert "Inference on one 64x80 image:" in tables["flop"] and "GFLOPs" in tables["flop"]
    assert "| decoder" in tables["flop"]
    assert "flops of dab_detr_r50_50ep.py" in capsys.readouterr().out


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
