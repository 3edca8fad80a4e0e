"""Tests for the synthetic shapes generator in sqr.data.synthetic."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import sqr.data.synthetic as synthetic
from sqr.data.coco import load_coco_json
from sqr.data.synthetic import CLASSES, ensure_synthetic_shapes, generate_synthetic_shapes


def _valid(root: Path) -> bool:
    return all((root / "annotations" / f"{s}.json").is_file() for s in ("train", "val"))


def test_deterministic(tmp_path: Path) -> None:
    kwargs = {"num_train": 6, "num_val": 4, "seed": 3}
    generate_synthetic_shapes(tmp_path / "a", **kwargs)
    generate_synthetic_shapes(tmp_path / "b", **kwargs)
    for split in ("train", "val"):
        a = (tmp_path / "a" / "annotations" / f"{split}.json").read_bytes()
        b = (tmp_path / "b" / "annotations" / f"{split}.json").read_bytes()
        assert a == b
        assert (tmp_path / "a" / split / "000000.png").read_bytes() == (
            tmp_path / "b" / split / "000000.png"
        ).read_bytes()
    generate_synthetic_shapes(tmp_path / "c", num_train=6, num_val=4, seed=4)
    assert (tmp_path / "c" / "annotations" / "train.json").read_bytes() != (
        tmp_path / "a" / "annotations" / "train.json"
    ).read_bytes()


def test_content(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    generate_synthetic_shapes(root, num_train=80, num_val=2, min_size=100, max_size=140)
    data = json.loads((root / "annotations" / "train.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(range(1, len(CLASSES) + 1))
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    assert len(data["images"]) == 80

    counts = Counter(a["image_id"] for a in data["annotations"])
    per_image = [counts.get(img["id"], 0) for img in data["images"]]
    assert max(per_image) <= 8
    assert 0 < per_image.count(0) < 80 // 2  # some, but not many, empty images
    assert len(set(a["category_id"] for a in data["annotations"])) == len(CLASSES)

    images = {img["id"]: img for img in data["images"]}
    for img in data["images"]:
        assert 100 <= img["width"] <= 140 and 100 <= img["height"] <= 140
        with Image.open(root / "train" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        img = images[ann["image_id"]]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["area"] == w * h and ann["iscrowd"] == 0
        # Objects span roughly 12-60% of the shorter side (triangles are a bit smaller).
        side = min(img["width"], img["height"])
        assert 0.05 * side <= max(w, h) <= 0.65 * side

    # The files load through the regular COCO reader.
    records, meta = load_coco_json(str(root / "annotations" / "train.json"), str(root / "train"))
    assert meta.thing_classes == list(CLASSES)
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"])


def test_refuses_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "junk.txt").write_text("x")
    with pytest.raises(FileExistsError, match="root"):
        generate_synthetic_shapes(tmp_path / "root", num_train=1, num_val=1)
    with pytest.raises(FileExistsError, match="root"):
        ensure_synthetic_shapes(tmp_path / "root", num_train=1, num_val=1)


def test_crash_leaves_no_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = synthetic._save_image
    saved = []

    def flaky_save(img, path):
        if len(saved) == 3:
            raise RuntimeError("simulated crash while writing images")
        saved.append(path)
        real_save(img, path)

    monkeypatch.setattr(synthetic, "_save_image", flaky_save)
    root = tmp_path / "shapes"
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_synthetic_shapes(root, num_train=5, num_val=2)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # the temp dir was cleaned up too
    assert saved and all(root not in p.parents for p in saved)  # never wrote into root


def test_ensure_ignores_leftover_temp_dir(tmp_path: Path) -> None:
    # What a killed run would leave behind: a partial temp dir next to root.
    leftover = tmp_path / ".tmp-synthetic-shapes-deadbeef"
    (leftover / "train").mkdir(parents=True)
    (leftover / "train" / "000000.png").write_bytes(b"partial")

    root = tmp_path / "shapes"
    assert ensure_synthetic_shapes(root, num_train=2, num_val=2) == root
    assert _valid(root)
    before = (root / "annotations" / "val.json").read_bytes()
    # A second call reuses the complete dataset without regenerating it.
    assert ensure_synthetic_shapes(root, num_train=2, num_val=2) == root
    assert (root / "annotations" / "val.json").read_bytes() == before


def test_ensure_accepts_empty_dir(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    root.mkdir()
    ensure_synthetic_shapes(root, num_train=1, num_val=1)
    assert _valid(root)


def test_lost_race_keeps_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If another process finishes first, our copy is discarded and theirs kept."""
    root = tmp_path / "shapes"
    real_write = synthetic._write_split
    raced = []

    def write_then_race(tmp_root, split, *args):
        real_write(tmp_root, split, *args)
        if split == "val" and not raced:
            raced.append(True)
            # The "other process" completes its dataset just before our rename.
            generate_synthetic_shapes(root, num_train=1, num_val=1, seed=99)

    monkeypatch.setattr(synthetic, "_write_split", write_then_race)
    generate_synthetic_shapes(root, num_train=2, num_val=2)
    assert len(json.loads((root / "annotations" / "train.json").read_text())["images"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]
