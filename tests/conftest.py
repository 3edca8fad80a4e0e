"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic shapes dataset (8 train / 16 val images), generated once per session.

    Treat it as read-only: it is shared by every test in the session.
    """
    from sqr.data.synthetic import generate_synthetic_shapes

    root = tmp_path_factory.mktemp("synthetic") / "synthetic_shapes"
    generate_synthetic_shapes(root, num_train=8, num_val=16, seed=0)
    return root
