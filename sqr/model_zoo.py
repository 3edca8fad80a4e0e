"""Experiment configs and checkpoints by name, as detectron2's ``model_zoo``.

    from sqr import model_zoo

    cfg = model_zoo.get_config("sqr_dab_detr_r50_50ep.py")
    cfg = model_zoo.get_config("quickstart/sqr_dab_detr_synthetic.py")
    weights = model_zoo.resolve("sqr://deformable_detr_r50_converted")

A config name is its path under ``projects/sqr/configs/``. A source checkout reads that folder;
an installed package reads the copy that ``setup.py`` ships inside it, so the names work in both
(and so does ``--config-file NAME`` of every ``sqr-*`` command).

Checkpoints (``sqr://NAME``, ``detectron2://...``, URLs) are resolved by
:mod:`sqr.engine.model_zoo`, re-exported here so that one module answers "which configs and
weights are there"; the engine keeps it because the checkpointer needs it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sqr.config import LazyConfig, experiment_config_file, experiment_config_names
from sqr.engine.model_zoo import (
    CHECKPOINTS,
    DownloadError,
    ZooEntry,
    cache_dir,
    download,
    resolve,
)

__all__ = [
    "CHECKPOINTS",
    "DownloadError",
    "ZooEntry",
    "cache_dir",
    "download",
    "get_config",
    "get_config_file",
    "list_configs",
    "resolve",
]


def get_config_file(config_path: str) -> str:
    """The file of an experiment config.

    Args:
        config_path: its path under ``projects/sqr/configs/``, e.g.
            ``"sqr_dab_detr_r50_50ep.py"`` or ``"quickstart/sqr_dab_detr_synthetic.py"``.

    Returns:
        The absolute path of the file, in the checkout or in the installed package.

    Raises:
        FileNotFoundError: no such config; the message names where it looked and close matches.
    """
    return experiment_config_file(config_path)


def get_config(config_path: str) -> DictConfig:
    """Load an experiment config by name (see :func:`get_config_file`).

    Returns:
        The loaded config, a fresh copy on every call; apply overrides with
        :meth:`sqr.config.LazyConfig.apply_overrides` and build it with
        :func:`sqr.config.instantiate`.
    """
    return LazyConfig.load(get_config_file(config_path))


def list_configs() -> list[str]:
    """Every experiment config name, sorted (``models/`` holds model parts, not experiments)."""
    return experiment_config_names()
