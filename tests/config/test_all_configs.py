"""Every config file in the repository loads, and its model instantiates at tiny sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import TINY_ADAMIXER, TINY_DAB_DETR, TINY_DEFORMABLE_DETR, TINY_DINO
from omegaconf import DictConfig, ListConfig, OmegaConf

from sqr.config import LazyConfig, instantiate, locate

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted(
    [
        *(REPO / "configs").rglob("*.py"),
        *(REPO / "projects").rglob("configs/**/*.py"),
        *(REPO / "tests" / "configs").rglob("*.py"),
    ]
)
# Overrides that shrink a model so that building it is cheap (keyed by path under the repo).
TINY_OVERRIDES: dict[str, list[str]] = {
    "projects/sqr/configs/models/dab_detr_r50.py": TINY_DAB_DETR,
    "projects/sqr/configs/dab_detr_r50_50ep.py": TINY_DAB_DETR,
    "projects/sqr/configs/sqr_dab_detr_r50_50ep.py": TINY_DAB_DETR,
    "projects/sqr/configs/models/deformable_detr_r50.py": TINY_DEFORMABLE_DETR,
    **{
        f"projects/sqr/configs/{prefix}deformable_detr_{variant}r50_50ep.py": TINY_DEFORMABLE_DETR
        for prefix in ("", "sqr_")
        for variant in ("", "refine_", "two_stage_")
    },
    **{
        f"projects/sqr/configs/detrex_weights/deformable_detr_r50_{variant}converted.py": (
            TINY_DEFORMABLE_DETR
        )
        for variant in ("", "box_refine_", "two_stage_")
    },
    "projects/sqr/configs/models/dino_r50.py": TINY_DINO,
    "projects/sqr/configs/dino_r50_4scale_12ep.py": TINY_DINO,
    "projects/sqr/configs/sqr_dino_r50_4scale_12ep.py": TINY_DINO,
    "projects/sqr/configs/models/adamixer_r50.py": TINY_ADAMIXER,
    **{
        f"projects/sqr/configs/{prefix}adamixer_{recipe}.py": TINY_ADAMIXER
        for prefix in ("", "sqr_")
        for recipe in ("r50_1x", "r101_7stage_300q_3x")
    },
}


def _ids(path: Path) -> str:
    return str(path.relative_to(REPO))


def _targets(node, where: str = ""):
    """Every (config path, _target_) pair in a config tree (interpolations left unresolved)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield where, value
            else:
                yield from _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}.{i}")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids)
def test_config_loads_and_instantiates(path: Path) -> None:
    cfg = LazyConfig.load(str(path))
    LazyConfig.apply_overrides(cfg, TINY_OVERRIDES.get(_ids(path), []))
    for where, target in _targets(cfg):
        assert callable(target) or callable(locate(target)), f"{path}: {where} -> {target!r}"
    if "model" in cfg:
        model = instantiate(cfg.model)
        assert isinstance(model, torch.nn.Module)
    if "lr_multiplier" in cfg:
        schedule = instantiate(cfg.lr_multiplier)
        assert 0 < schedule(0, 100) <= 1


def test_there_are_configs_to_check() -> None:
    assert any(p.name == "train.py" for p in CONFIG_FILES)


def test_every_model_config_has_tiny_overrides() -> None:
    # A config left out of TINY_OVERRIDES builds its full-size model (an R50 or R101) here.
    has_model = {_ids(p) for p in CONFIG_FILES if "model" in LazyConfig.load(str(p))}
    tiny_by_design = {
        "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py",
        "tests/configs/standin_synthetic.py",
    }
    assert has_model - tiny_by_design - set(TINY_OVERRIDES) == set()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids)
def test_detectron2_can_load_config(path: Path) -> None:
    d2_config = pytest.importorskip(
        "detectron2.config", reason="detectron2 is not installed (it is not on PyPI)"
    )
    cfg = d2_config.LazyConfig.load(str(path))
    if "model" in cfg:
        assert isinstance(d2_config.instantiate(cfg.model), torch.nn.Module)
