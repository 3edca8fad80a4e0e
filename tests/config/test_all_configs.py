"""Every config file in the repository loads, and its model instantiates at tiny sizes."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sqr.config import LazyConfig, instantiate, locate
from sqr.modeling import table

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted(
    [
        *(REPO / "configs").rglob("*.py"),
        *(REPO / "projects").rglob("configs/**/*.py"),
        *(REPO / "tests" / "configs").rglob("*.py"),
    ]
)
# The configs that detrex's own tools/train_net.py runs import detrex (and detectron2), which are
# not on PyPI; without them these configs cannot even load, so their tests skip.
DETREX_CONFIGS = "projects/sqr/configs/detrex/"


def _ids(path: Path) -> str:
    return str(path.relative_to(REPO))


def _detrex_missing() -> str | None:
    """Why detrex's configs cannot load here, or None when they can."""
    try:
        importlib.import_module("detrex.config")
    except ImportError as e:
        return f"detrex is not importable ({e}); configs under {DETREX_CONFIGS} need it"
    return None


DETREX_MISSING = _detrex_missing()


def _loadable(paths: list[Path]) -> list:
    """``paths`` as pytest params, the detrex configs skipped (with the reason) without detrex."""
    return [
        pytest.param(
            path,
            id=_ids(path),
            marks=pytest.mark.skipif(
                DETREX_MISSING is not None and _ids(path).startswith(DETREX_CONFIGS),
                reason=DETREX_MISSING or "",
            ),
        )
        for path in paths
    ]


def _model_fragment(recipe: str) -> str:
    """The models/ file a recipe's model comes from, following ``from .X import model`` through
    the recipes it builds on to ``from .models.Y import model``."""
    text = (REPO / "projects/sqr/configs" / recipe).read_text()
    found = re.search(r"^from \.(models\.)?(\w+) import [^\n]*\bmodel\b", text, re.M)
    assert found, f"{recipe} imports no model"
    if found.group(1):
        return f"models/{found.group(2)}.py"
    return _model_fragment(f"{found.group(2)}.py")


# Overrides that shrink a model so that building it is cheap (keyed by path under the repo): each
# table entry's for its recipes and the model fragment its baseline recipe imports.
TINY_OVERRIDES: dict[str, list[str]] = {
    f"projects/sqr/configs/{name}": list(recipe.tiny)
    for entry in table.DETECTORS
    for recipe in (entry, *entry.variants)
    for name in (
        recipe.config,
        recipe.baseline_config,
        _model_fragment(recipe.baseline_config),
    )
}
# The released weights' configs evaluate a Deformable-DETR recipe's model.
TINY_OVERRIDES.update(
    {
        f"projects/sqr/configs/detrex_weights/deformable_detr_r50_{variant}converted.py": list(
            table.TINY_DEFORMABLE_DETR
        )
        for variant in ("", "box_refine_", "two_stage_")
    }
)
# detrex's configs wrap the same models in Detectron2Adapter (model.detector): the same overrides.
TINY_OVERRIDES.update(
    {
        f"{DETREX_CONFIGS}{name}": [
            o.replace("model.", "model.detector.", 1) for o in TINY_OVERRIDES[recipe]
        ]
        for name, recipe in (
            (path.name, f"projects/sqr/configs/{path.name}")
            for path in (REPO / DETREX_CONFIGS).glob("*.py")
        )
    }
)


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


@pytest.mark.parametrize("path", _loadable(CONFIG_FILES))
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
        # detectron2's schedulers (detrex configs) take the training fraction; ours (iter, total).
        value = schedule(0.0) if _ids(path).startswith(DETREX_CONFIGS) else schedule(0, 100)
        assert 0 < value <= 1


def test_there_are_configs_to_check() -> None:
    assert any(p.name == "train.py" for p in CONFIG_FILES)


def test_every_model_config_has_tiny_overrides() -> None:
    # A config left out of TINY_OVERRIDES builds its full-size model (an R50 or R101) here.
    # Without detrex, its configs cannot load; they are listed by name (one per recipe).
    loadable = [
        p for p in CONFIG_FILES if not (DETREX_MISSING and _ids(p).startswith(DETREX_CONFIGS))
    ]
    has_model = {_ids(p) for p in loadable if "model" in LazyConfig.load(str(p))}
    tiny_by_design = {
        "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py",
        "projects/sqr/configs/quickstart/sqr_rtdetrv2_synthetic.py",
        "tests/configs/standin_synthetic.py",
        "tests/configs/standin_bn_synthetic.py",
    }
    assert has_model - tiny_by_design - set(TINY_OVERRIDES) == set()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids)
def test_detectron2_can_load_config(path: Path) -> None:
    d2_config = pytest.importorskip(
        "detectron2.config", reason="detectron2 is not installed (it is not on PyPI)"
    )
    if DETREX_MISSING is not None and _ids(path).startswith(DETREX_CONFIGS):
        pytest.skip(DETREX_MISSING)
    cfg = d2_config.LazyConfig.load(str(path))
    LazyConfig.apply_overrides(cfg, TINY_OVERRIDES.get(_ids(path), []))
    if "model" in cfg:
        assert isinstance(d2_config.instantiate(cfg.model), torch.nn.Module)
