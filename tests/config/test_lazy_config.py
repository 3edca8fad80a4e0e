"""LazyConfig: loading with relative imports, overrides, saving, instantiation."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from sqr.config import L, LazyConfig, instantiate
from sqr.model_zoo import get_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def config_tree(tmp_path: Path) -> Path:
    """root.py imports a sibling file and a file one directory up, then edits what it imported."""
    write(
        tmp_path / "common" / "base.py",
        """
        import torch
        from sqr.config import LazyCall as L
        model = L(torch.nn.Linear)(in_features=2, out_features=3)
        train = dict(max_iter=10, lr=0.1)
    """,
    )
    write(
        tmp_path / "exp" / "parts.py",
        """
        opt = dict(momentum=0.9)
    """,
    )
    return write(
        tmp_path / "exp" / "root.py",
        """
        from ..common.base import model, train
        from .parts import opt
        train.max_iter = 20
        model.out_features = 5
        _private = dict(a=1)
        not_a_dict = 3
    """,
    )


def test_relative_imports_and_edits(config_tree: Path) -> None:
    cfg = LazyConfig.load(str(config_tree))
    assert isinstance(cfg, DictConfig)
    assert set(cfg) == {"model", "train", "opt"}  # private names and non-dicts are dropped
    assert cfg.train.max_iter == 20 and cfg.train.lr == 0.1
    assert cfg.opt.momentum == 0.9
    layer = instantiate(cfg.model)
    assert isinstance(layer, torch.nn.Linear) and layer.out_features == 5
    # Every load executes the files afresh: the edit above did not leak into the base file.
    base = LazyConfig.load(str(config_tree.parent.parent / "common" / "base.py"))
    assert base.train.max_iter == 10 and base.model.out_features == 3


def test_load_selected_keys(config_tree: Path) -> None:
    train, opt = LazyConfig.load(str(config_tree), keys=("train", "opt"))
    assert train.max_iter == 20 and opt.momentum == 0.9


def test_missing_relative_import_names_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "a.py", "from .nope import x\n")
    with pytest.raises(ImportError, match="nope.py"):
        LazyConfig.load(str(cfg))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.py"):
        LazyConfig.load(str(tmp_path / "absent.py"))


def test_overrides_parse_python_literals(config_tree: Path) -> None:
    cfg = LazyConfig.load(str(config_tree))
    LazyConfig.apply_overrides(
        cfg,
        [
            "train.max_iter=7",
            "train.lr=1e-3",
            "opt.momentum=[1, 2]",
            "+model.bias=False",
            "+train.device=cpu",
            "+train.features=[res3, res4]",
        ],
    )
    assert cfg.train.max_iter == 7
    assert cfg.train.lr == pytest.approx(1e-3)
    assert list(cfg.opt.momentum) == [1, 2]
    assert cfg.model.bias is False
    assert cfg.train.device == "cpu"  # not a literal: kept as a string
    assert list(cfg.train.features) == ["res3", "res4"]  # a list of bare words


def test_override_of_unknown_key_names_it(config_tree: Path) -> None:
    cfg = LazyConfig.load(str(config_tree))
    with pytest.raises(KeyError, match=r"train\.max_iters.*max_iter"):
        LazyConfig.apply_overrides(cfg, ["train.max_iters=3"])
    with pytest.raises(ValueError, match="key=value"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter"])


def test_override_below_a_value_names_the_value_key() -> None:
    # detectron2's spelling: there the dataset is a call with a `names` argument, here the
    # dataset entry is the name itself.
    cfg = DictConfig({"dataloader": {"train": {"dataset": "coco_2017_train", "sizes": [1, 2]}}})
    expected = (
        r"'dataloader\.train\.dataset\.names' goes below the value 'coco_2017_train' of "
        r"'dataloader\.train\.dataset'.*: dataloader\.train\.dataset=\.\.\."
    )
    with pytest.raises(KeyError, match=expected):
        LazyConfig.apply_overrides(cfg, ["dataloader.train.dataset.names=my_train"])
    # With '+' OmegaConf would replace the name by {"names": "my_train"}.
    with pytest.raises(KeyError, match=expected):
        LazyConfig.apply_overrides(cfg, ["+dataloader.train.dataset.names=my_train"])
    assert cfg.dataloader.train.dataset == "coco_2017_train"
    with pytest.raises(KeyError, match=r"'dataloader\.train\.sizes' is a list of 2 entries"):
        LazyConfig.apply_overrides(cfg, ["dataloader.train.sizes.2=3"])
    LazyConfig.apply_overrides(cfg, ["dataloader.train.sizes.1=3", "+dataloader.test.n=1"])
    assert list(cfg.dataloader.train.sizes) == [1, 3] and cfg.dataloader.test.n == 1


def test_save_round_trip_and_unserialisable_values(tmp_path: Path, caplog) -> None:
    cfg = DictConfig(
        {"model": L(torch.nn.Linear)(in_features=2, out_features=4), "train": {"f": lambda x: x}},
        flags={"allow_objects": True},
    )
    out = tmp_path / "config.yaml"
    with caplog.at_level(logging.WARNING, logger="sqr.config.lazy"):
        LazyConfig.save(cfg, str(out))
    assert "train.f" in caplog.text  # the warning names the key holding the lambda
    text = out.read_text()
    assert "torch.nn.modules.linear.Linear" in text and "<lambda>" in text
    loaded = LazyConfig.load(str(out))
    assert instantiate(loaded.model).out_features == 4  # class saved as its import path
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left


def test_instantiate_nested_and_string_targets() -> None:
    cfg = L("torch.nn.ModuleDict")(
        modules={"a": L(torch.nn.Linear)(in_features=1, out_features=2), "b": L(torch.nn.ReLU)()}
    )
    built = instantiate(cfg)
    assert isinstance(built["a"], torch.nn.Linear) and isinstance(built["b"], torch.nn.ReLU)
    # Plain lists and dicts are rebuilt with their LazyCalls made.
    built = instantiate([L(torch.nn.Identity)(), {"y": L(torch.nn.ReLU)()}])
    assert isinstance(built[0], torch.nn.Identity) and isinstance(built[1]["y"], torch.nn.ReLU)


def test_instantiate_error_names_the_config_path() -> None:
    cfg = DictConfig({"model": L(torch.nn.Linear)(in_features=2)}, flags={"allow_objects": True})
    with pytest.raises(TypeError, match=r"Linear at config 'model'"):
        instantiate(cfg.model, "model")
    with pytest.raises(ImportError, match="torch.nn.NoSuchLayer"):
        instantiate(L("torch.nn.NoSuchLayer")())


def test_interpolation_is_resolved_when_instantiating() -> None:
    cfg = DictConfig(
        {
            "num_classes": 7,
            "head": L(torch.nn.Linear)(in_features=3, out_features="${..num_classes}"),
        },
        flags={"allow_objects": True},
    )
    assert instantiate(cfg.head).out_features == 7


def test_get_config_returns_fresh_copies() -> None:
    first = get_config("common/train.py").train
    first.max_iter = 1
    assert get_config("common/train.py").train.max_iter != 1
    with pytest.raises(FileNotFoundError, match="common/nope.py"):
        get_config("common/nope.py")
