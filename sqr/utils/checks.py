"""Argument checks shared by the typed constructors."""

from __future__ import annotations

from typing import Any


def check_positive(**counts: Any) -> None:
    """Raise ValueError naming the first of ``counts`` (e.g. ``num_queries=0``) that is not a
    positive integer (a bool is not one)."""
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be a positive integer, got {count!r}")
