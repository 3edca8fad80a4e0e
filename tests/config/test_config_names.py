"""Experiment configs by name: ``sqr.model_zoo.get_config`` and the roots it searches."""

from __future__ import annotations

from pathlib import Path

import pytest

import sqr.config
from sqr import model_zoo
from sqr.config import LazyConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "projects" / "sqr" / "configs"


def test_every_experiment_config_resolves_to_its_file() -> None:
    names = model_zoo.list_configs()
    assert names == sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py"))
    assert {"sqr_dab_detr_r50_50ep.py", "quickstart/sqr_dab_detr_synthetic.py"} <= set(names)
    for name in names:
        assert model_zoo.get_config_file(name) == str(CONFIGS / name)


def test_get_config_loads_by_name_and_by_repository_path() -> None:
    cfg = model_zoo.get_config("sqr_dab_detr_r50_50ep.py")
    assert cfg.model.recollection.mode == "selective"
    assert cfg.train.output_dir == "./output/sqr_dab_detr_r50_50ep"
    # The README's paths work as names too, e.g. outside a checkout.
    path = "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py"
    assert model_zoo.get_config_file(path) == str(CONFIGS / "quickstart/sqr_dab_detr_synthetic.py")
    # A fresh copy every time: editing one does not change the next.
    cfg.train.max_iter = 1
    assert model_zoo.get_config("sqr_dab_detr_r50_50ep.py").train.max_iter == 375000


def test_unknown_name_lists_close_matches_and_roots() -> None:
    with pytest.raises(FileNotFoundError) as info:
        model_zoo.get_config("sqr_dab_detr_synthetic.py")  # lives in quickstart/
    message = str(info.value)
    assert "'sqr_dab_detr_synthetic.py'" in message
    assert "close matches: quickstart/sqr_dab_detr_synthetic.py" in message
    assert str(CONFIGS) in message


@pytest.mark.parametrize(
    "name", ["../../../configs/common/train.py", str(CONFIGS / "dab_detr_r50_50ep.py"), ""]
)
def test_names_cannot_leave_the_roots(name: str) -> None:
    # Each of these would name an existing file if joined to a root: "../" climbs out of it, and
    # an absolute path replaces it. Paths are --config-file's business, not the zoo's.
    with pytest.raises(FileNotFoundError, match="not found under"):
        model_zoo.get_config_file(name)


def test_checkout_first_then_packaged_copy(tmp_path: Path, monkeypatch) -> None:
    checkout, packaged = tmp_path / "checkout", tmp_path / "packaged"
    for root, lr in ((checkout, 1), (packaged, 2)):
        (root / "quickstart").mkdir(parents=True)
        (root / "quickstart" / "a.py").write_text(f"train = dict(lr={lr})\n")
    (packaged / "only_packaged.py").write_text("train = dict(lr=3)\n")
    monkeypatch.setattr(sqr.config, "EXPERIMENT_CONFIG_ROOTS", (checkout, packaged))
    assert LazyConfig.load(model_zoo.get_config_file("quickstart/a.py")).train.lr == 1
    assert model_zoo.get_config("only_packaged.py").train.lr == 3
    assert model_zoo.list_configs() == ["only_packaged.py", "quickstart/a.py"]
    # Without a checkout (an installed package), the packaged copy serves every name.
    monkeypatch.setattr(sqr.config, "EXPERIMENT_CONFIG_ROOTS", (tmp_path / "none", packaged))
    assert model_zoo.get_config("quickstart/a.py").train.lr == 2
