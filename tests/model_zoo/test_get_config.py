"""Configs by name: the one ``sqr.model_zoo.get_config``, both kinds of name, the roots."""

from __future__ import annotations

from pathlib import Path

import pytest

import sqr.config
from sqr import model_zoo
from sqr.config import LazyConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "projects" / "sqr" / "configs"
SHARED = REPO / "configs"


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


def test_one_get_config_loads_shared_and_experiment_configs() -> None:
    # Shared parts, by the names the configs themselves use.
    assert model_zoo.get_config_file("common/train.py") == str(SHARED / "common" / "train.py")
    assert model_zoo.get_config_file("configs/common/optim.py") == str(SHARED / "common/optim.py")
    train = model_zoo.get_config("common/train.py").train
    assert train.output_dir == "./output" and train.device == "auto"
    assert "AdamW" in model_zoo.get_config("common/optim.py")
    assert "dataloader" in model_zoo.get_config("common/data/coco_detr.py")
    # An experiment, whose file itself calls get_config("common/...").
    cfg = model_zoo.get_config("dab_detr_r50_50ep.py")
    assert cfg.train.max_iter == 375000 and cfg.optimizer.lr == 1e-4
    # sqr.config has no second, public get_config.
    assert not hasattr(sqr.config, "get_config")


def test_every_shared_config_resolves_to_its_file() -> None:
    names = sqr.config.shared_config_names()
    assert names == sorted(p.relative_to(SHARED).as_posix() for p in SHARED.rglob("*.py"))
    assert "common/data/synthetic_detr.py" in names
    for name in names:
        assert model_zoo.get_config_file(name) == str(SHARED / name)


def test_the_two_kinds_of_name_never_overlap() -> None:
    # "common/..." always means a shared part: an experiment folder of that name would be hidden.
    assert not (CONFIGS / sqr.config.SHARED_FOLDER).exists()
    assert all(
        n.split("/")[0] == sqr.config.SHARED_FOLDER for n in sqr.config.shared_config_names()
    )
    assert not any(n.startswith(f"{sqr.config.SHARED_FOLDER}/") for n in model_zoo.list_configs())


@pytest.mark.parametrize(
    ("name", "kind", "root", "match"),
    [
        ("common/trian.py", "shared", SHARED, "common/train.py"),
        ("common/data/coco_detr", "shared", SHARED, "common/data/coco_detr.py"),
        ("sqr_dab_detr_r50_50.py", "experiment", CONFIGS, "sqr_dab_detr_r50_50ep.py"),
    ],
)
def test_unknown_name_is_named_with_its_kind_roots_and_close_matches(
    name: str, kind: str, root: Path, match: str
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        model_zoo.get_config(name)
    message = str(info.value)
    assert message.startswith(f"{kind} config {name!r} not found under: {root}, ")
    close = message.split("; close matches: ")[1].split(", ")
    assert close[0] == match


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


def test_shared_configs_checkout_first_then_packaged_copy(tmp_path: Path, monkeypatch) -> None:
    checkout, packaged = tmp_path / "checkout", tmp_path / "packaged"
    for root, lr in ((checkout, 1), (packaged, 2)):
        (root / "common").mkdir(parents=True)
        (root / "common" / "train.py").write_text(f"train = dict(lr={lr})\n")
    monkeypatch.setattr(sqr.config, "SHARED_CONFIG_ROOTS", (checkout, packaged))
    assert model_zoo.get_config("common/train.py").train.lr == 1
    monkeypatch.setattr(sqr.config, "SHARED_CONFIG_ROOTS", (tmp_path / "none", packaged))
    assert model_zoo.get_config("common/train.py").train.lr == 2
