"""The detectors of :mod:`sqr.modeling.table` at their tiny size, for the contract tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from helpers.detectors import build_detector

from sqr.modeling import table

CONFIGS = Path(__file__).resolve().parents[2] / "projects/sqr/configs"


def tiny_overrides(entry: table.DetectorEntry, *extra: str) -> list[str]:
    """The entry's tiny size without dropout (two runs of one step must draw the same)."""
    return [*entry.tiny, *entry.no_dropout, *extra]


def build(entry: table.DetectorEntry, *extra: str) -> torch.nn.Module:
    """The entry's SQR recipe at tiny size with ``extra`` overrides, initialised from seed 0."""
    return build_detector(CONFIGS / entry.config, tiny_overrides(entry, *extra))


@dataclass
class Pair:
    """One detector of the table: its SQR model and its baseline, with the same weights."""

    entry: table.DetectorEntry
    sqr: torch.nn.Module
    baseline: torch.nn.Module
