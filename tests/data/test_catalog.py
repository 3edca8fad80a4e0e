"""Tests for the dataset registry in sqr.data.catalog."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from sqr.data.catalog import (
    datasets_root,
    get_metadata,
    list_datasets,
    load_dataset,
    register_coco_instances,
)


def _unique(prefix: str) -> str:
    # The registry is process-global; unique names keep tests independent of each other.
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_builtins_registered() -> None:
    names = list_datasets()
    for name in (
        "coco_2017_train",
        "coco_2017_val",
        "synthetic_shapes_train",
        "synthetic_shapes_val",
    ):
        assert name in names


def test_datasets_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert datasets_root() == Path("datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path


def test_missing_coco_names_path_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("coco_2017_val")
    msg = str(info.value)
    assert str(tmp_path / "coco" / "annotations" / "instances_val2017.json") in msg
    assert "DETECTRON2_DATASETS" in msg
    assert repr(str(tmp_path)) in msg  # the variable's current value
    assert "val2017" in msg


def test_register_and_load(synthetic_root: Path) -> None:
    name = _unique("test_catalog_val")
    register_coco_instances(
        name, str(synthetic_root / "annotations" / "val.json"), str(synthetic_root / "val")
    )
    assert name in list_datasets()
    records, metadata = load_dataset(name)
    assert len(records) == 16
    assert metadata.name == name
    assert metadata.thing_classes == ["circle", "square", "triangle", "cross"]
    assert get_metadata(name) is metadata
    assert all(Path(r["file_name"]).is_file() for r in records)
    # A fresh list each call, so callers may reorder or extend it freely.
    assert load_dataset(name)[0] is not records


def test_registering_again(tmp_path: Path) -> None:
    name = _unique("test_catalog_dup")
    register_coco_instances(name, str(tmp_path / "a.json"), str(tmp_path))
    # The same arguments again, as when a config file that registers its dataset is loaded
    # twice: nothing changes. A Path equals its string.
    register_coco_instances(name, tmp_path / "a.json", tmp_path)
    assert list_datasets().count(name) == 1
    with pytest.raises(ValueError) as info:
        register_coco_instances(name, str(tmp_path / "b.json"), str(tmp_path))
    msg = str(info.value)
    assert repr(name) in msg
    assert f"json_file={str(tmp_path / 'a.json')!r}" in msg  # the registered one
    assert f"json_file={str(tmp_path / 'b.json')!r}" in msg  # the refused one
    other_root = re.escape(f"image_root={str(tmp_path / 'other')!r}")
    with pytest.raises(ValueError, match=other_root):
        register_coco_instances(name, str(tmp_path / "a.json"), str(tmp_path / "other"))
    with pytest.raises(ValueError, match="'coco_2017_train' is built in"):
        register_coco_instances("coco_2017_train", str(tmp_path / "b.json"), str(tmp_path))
    with pytest.raises(ValueError, match="'synthetic_shapes_val' is built in"):
        register_coco_instances("synthetic_shapes_val", str(tmp_path / "b.json"), str(tmp_path))
    with pytest.raises(ValueError, match="non-empty string"):
        register_coco_instances("", str(tmp_path / "a.json"), str(tmp_path))


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(KeyError) as info:
        load_dataset("no_such_dataset")
    assert "no_such_dataset" in str(info.value)
    assert "coco_2017_train" in str(info.value)


def test_registered_missing_json(tmp_path: Path) -> None:
    name = _unique("test_catalog_missing")
    missing = tmp_path / "nope.json"
    register_coco_instances(name, str(missing), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_dataset(name)


def test_cache_sees_rewritten_json(tmp_path: Path) -> None:
    name = _unique("test_catalog_reload")
    json_file = tmp_path / "ann.json"
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    json_file.write_text(json.dumps(data))
    register_coco_instances(name, str(json_file), str(tmp_path))
    assert load_dataset(name)[0] == []
    data["images"] = [{"id": 3, "file_name": "x.png", "height": 4, "width": 5}]
    json_file.write_text(json.dumps(data) + " " * 8)  # different size -> different stamp
    assert [r["image_id"] for r in load_dataset(name)[0]] == [3]


def test_synthetic_builtin_generates_on_first_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sqr.data.synthetic as synthetic

    calls = []
    real = synthetic.generate_synthetic_shapes

    def small(root, **kwargs):  # keep the test fast: a handful of images is enough
        calls.append(root)
        real(root, num_train=2, num_val=3)

    monkeypatch.setattr(synthetic, "generate_synthetic_shapes", small)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    records, metadata = load_dataset("synthetic_shapes_val")
    assert len(records) == 3
    assert (tmp_path / synthetic.DIRNAME / "annotations" / "train.json").is_file()
    assert metadata.json_file == str(tmp_path / synthetic.DIRNAME / "annotations" / "val.json")
    load_dataset("synthetic_shapes_train")
    assert len(calls) == 1  # generated once, then reused
