"""Shared pytest fixtures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _sqr_logs_reach_caplog():
    """End-to-end tests run ``setup_logger``, which stops ``sqr`` records at the ``sqr`` logger
    (as detectron2 does); let them propagate again so that later tests' ``caplog`` sees them."""
    logger = logging.getLogger("sqr")
    logger.propagate = True
    yield
    logger.propagate = True


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic shapes dataset (8 train / 16 val images), generated once per session.

    Treat it as read-only: it is shared by every test in the session.
    """
    from sqr.data.synthetic import generate_synthetic_shapes

    root = tmp_path_factory.mktemp("synthetic") / "synthetic_shapes"
    generate_synthetic_shapes(root, num_train=8, num_val=16, seed=0)
    return root


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide ``$DETECTRON2_DATASETS`` for end-to-end runs (synthetic data appears there
    on first use); the previous value is restored at the end of the session."""
    import os

    root = tmp_path_factory.mktemp("datasets")
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = previous
