"""Configs and checkpoints by name, as detectron2's ``model_zoo``.

    from sqr import model_zoo

    cfg = model_zoo.get_config("sqr_dab_detr_r50_50ep.py")  # an experiment
    cfg = model_zoo.get_config("quickstart/sqr_dab_detr_synthetic.py")
    train = model_zoo.get_config("common/train.py").train  # a shared part, as configs use them
    weights = model_zoo.resolve("sqr://deformable_detr_r50_converted")

One :func:`get_config` loads both kinds of config, told apart by the name's first folder: a name
in ``common/`` is a shared part under ``configs/`` (``"common/train.py"``,
``"common/data/coco_detr.py"``); any other name is an experiment config, its path under
``projects/sqr/configs/``. A source checkout reads those folders; an installed package reads the
copy that ``setup.py`` ships inside it, so the names work in both (and so does
``--config-file NAME`` of every ``sqr-*`` command).

Checkpoints: :data:`CHECKPOINTS` is the published table (:mod:`sqr.model_zoo.checkpoints`),
:func:`resolve` turns ``sqr://NAME``, ``detectron2://...``, URLs and paths into local files, and
:func:`download` is the atomic, verified download behind it (:mod:`sqr.model_zoo.downloads`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from sqr.config import LazyConfig, experiment_config_names, find_config_file

from .checkpoints import CHECKPOINTS, ZooEntry, resolve
from .downloads import DownloadError, cache_dir, download

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
    """The file of a config.

    Args:
        config_path: a shared part in ``common/`` (``"common/train.py"``) or an experiment
            config's path under ``projects/sqr/configs/`` (``"sqr_dab_detr_r50_50ep.py"``,
            ``"quickstart/sqr_dab_detr_synthetic.py"``). A leading ``configs/`` or
            ``projects/sqr/configs/`` is accepted too.

    Returns:
        The absolute path of the file, in the checkout or in the installed package.

    Raises:
        FileNotFoundError: no such config; the message names it, where it looked and close
            matches.
    """
    return find_config_file(config_path)


def get_config(config_path: str) -> DictConfig:
    """Load a config by name (see :func:`get_config_file`).

    Returns:
        The loaded config, a fresh copy on every call; apply overrides with
        :meth:`sqr.config.LazyConfig.apply_overrides` and build it with
        :func:`sqr.config.instantiate`.
    """
    return LazyConfig.load(get_config_file(config_path))


def list_configs() -> list[str]:
    """Every experiment config name, sorted (``models/`` holds model parts, not experiments;
    the shared parts in ``common/`` are not listed)."""
    return experiment_config_names()
