"""Tests for sqr.data.coco.load_coco_json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sqr.data.coco import load_coco_json


def _write(tmp_path: Path, images: list, annotations: list, categories: list) -> str:
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return str(path)


CATEGORIES = [
    # Deliberately non-contiguous and out of order: contiguous ids follow the sorted json ids.
    {"id": 9, "name": "nine"},
    {"id": 1, "name": "one"},
    {"id": 5, "name": "five"},
]
IMAGES = [
    {"id": 7, "file_name": "b.jpg", "height": 50, "width": 60},
    {"id": 2, "file_name": "a.jpg", "height": 30, "width": 40},
    {"id": 4, "file_name": "empty.jpg", "height": 10, "width": 10},
]


def _ann(ann_id: int, image_id: int, cat: int, bbox: list, **extra) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        **extra,
    }


def test_load_basic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    anns = [
        _ann(1, 2, 1, [1.0, 2.0, 3.0, 4.0]),
        _ann(2, 2, 9, [10, 10, 5, 5], iscrowd=1),
        _ann(3, 7, 5, [0, 0, 0, 7]),  # zero width: dropped
        _ann(4, 7, 5, [0, 0, 7, -1]),  # negative height: dropped
        _ann(5, 7, 5, [5.5, 6.5, 10, 20]),
    ]
    json_file = _write(tmp_path, IMAGES, anns, CATEGORIES)
    with caplog.at_level(logging.WARNING, logger="sqr.data.coco"):
        records, meta = load_coco_json(json_file, str(tmp_path / "imgs"), "toy")

    # One warning for the whole file, naming it and the count.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert json_file in warnings[0].getMessage()
    assert "dropped 2 " in warnings[0].getMessage()

    assert meta.name == "toy"
    assert meta.thing_classes == ["one", "five", "nine"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 5: 1, 9: 2}
    assert meta.contiguous_id_to_dataset_id == {0: 1, 1: 5, 2: 9}
    assert meta.json_file == json_file

    assert [r["image_id"] for r in records] == [2, 4, 7]  # ordered by image id
    first, empty, last = records
    assert first["file_name"] == str((tmp_path / "imgs" / "a.jpg").absolute())
    assert (first["height"], first["width"]) == (30, 40)
    assert first["annotations"] == [
        {"bbox": [1.0, 2.0, 4.0, 6.0], "category_id": 0, "iscrowd": 0},  # XYWH -> XYXY
        {"bbox": [10.0, 10.0, 15.0, 15.0], "category_id": 2, "iscrowd": 1},
    ]
    assert empty["annotations"] == []  # kept as a negative example
    assert last["annotations"] == [{"bbox": [5.5, 6.5, 15.5, 26.5], "category_id": 1, "iscrowd": 0}]
    assert all(isinstance(v, float) for v in last["annotations"][0]["bbox"])


def test_no_warning_without_dropped_boxes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    json_file = _write(tmp_path, IMAGES, [_ann(1, 2, 1, [0, 0, 1, 1])], CATEGORIES)
    with caplog.at_level(logging.WARNING, logger="sqr.data.coco"):
        load_coco_json(json_file, str(tmp_path))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_unknown_category_names_image_and_id(tmp_path: Path) -> None:
    json_file = _write(tmp_path, IMAGES, [_ann(1, 7, 3, [0, 0, 2, 2])], CATEGORIES)
    with pytest.raises(ValueError) as info:
        load_coco_json(json_file, str(tmp_path))
    msg = str(info.value)
    assert "b.jpg" in msg
    assert "of image id 7" in msg
    assert "field 'category_id' is 3" in msg


def test_missing_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_json(str(tmp_path / "missing.json"), str(tmp_path))


def test_duplicate_image_id_names_both_files(tmp_path: Path) -> None:
    # pycocotools keys images by id, so the second entry would silently replace the first and
    # first.jpg would be trained with second.jpg's boxes.
    images = [
        {"id": 3, "file_name": "first.jpg", "height": 10, "width": 10},
        {"id": 3, "file_name": "second.jpg", "height": 10, "width": 10},
    ]
    json_file = _write(tmp_path, images, [_ann(1, 3, 1, [0, 0, 2, 2])], CATEGORIES)
    with pytest.raises(ValueError) as info:
        load_coco_json(json_file, str(tmp_path))
    msg = str(info.value)
    assert json_file in msg
    assert "image id 3" in msg
    assert "'first.jpg'" in msg and "'second.jpg'" in msg


def test_non_finite_boxes_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inf, nan = float("inf"), float("nan")
    anns = [
        _ann(1, 2, 1, [10, 10, inf, 20]),  # infinite width
        _ann(2, 2, 1, [nan, 0, 5, 5]),
        _ann(3, 2, 1, [0, 0, 5, nan]),
        _ann(4, 2, 1, [-inf, 0, 5, 5]),
        _ann(5, 2, 1, [0, 0, 0, 5]),  # zero width: counted with the non-finite ones
        _ann(6, 2, 1, [1, 2, 3, 4]),  # the only valid box
    ]
    json_file = _write(tmp_path, IMAGES, anns, CATEGORIES)
    with caplog.at_level(logging.WARNING, logger="sqr.data.coco"):
        records, _ = load_coco_json(json_file, str(tmp_path))

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert json_file in msg and "dropped 5 " in msg and "non-finite or non-positive" in msg
    image_2 = next(r for r in records if r["image_id"] == 2)
    assert image_2["annotations"] == [
        {"bbox": [1.0, 2.0, 4.0, 6.0], "category_id": 0, "iscrowd": 0}
    ]


@pytest.mark.parametrize("file_name", ["../../etc/passwd", "sub/../../outside.jpg", "/etc/passwd"])
def test_file_name_escaping_image_root_is_refused(tmp_path: Path, file_name: str) -> None:
    images = [{"id": 5, "file_name": file_name, "height": 10, "width": 10}]
    json_file = _write(tmp_path, images, [], CATEGORIES)
    with pytest.raises(ValueError) as info:
        load_coco_json(json_file, str(tmp_path / "imgs"))
    msg = str(info.value)
    assert json_file in msg and "image id 5" in msg and repr(file_name) in msg


def test_file_name_inside_image_root_is_normalised(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    images = [
        # Redundant components that stay under the root are fine, as is an absolute path
        # inside it.
        {"id": 1, "file_name": "sub/../a.jpg", "height": 10, "width": 10},
        {"id": 2, "file_name": str(root / "deep" / "b.jpg"), "height": 10, "width": 10},
    ]
    json_file = _write(tmp_path, images, [], CATEGORIES)
    records, _ = load_coco_json(json_file, str(root))
    assert [r["file_name"] for r in records] == [
        str((root / "a.jpg").absolute()),
        str((root / "deep" / "b.jpg").absolute()),
    ]


@pytest.mark.parametrize("bad_id", ["abc", 2.0, True])
def test_non_integer_image_id_names_entry(tmp_path: Path, bad_id: object) -> None:
    images = [
        {"id": 1, "file_name": "ok.jpg", "height": 10, "width": 10},
        {"id": bad_id, "file_name": "bad.jpg", "height": 10, "width": 10},
    ]
    json_file = _write(tmp_path, images, [], CATEGORIES)
    with pytest.raises(ValueError) as info:
        load_coco_json(json_file, str(tmp_path))
    msg = str(info.value)
    assert json_file in msg and repr(bad_id) in msg and "'bad.jpg'" in msg
    assert "expected an integer" in msg


def test_annotation_of_unknown_image_names_it(tmp_path: Path) -> None:
    # pycocotools indexes this annotation under image 99 and nothing ever reads it back.
    json_file = _write(tmp_path, IMAGES, [_ann(8, 99, 1, [0, 0, 2, 2])], CATEGORIES)
    with pytest.raises(ValueError) as info:
        load_coco_json(json_file, str(tmp_path))
    msg = str(info.value)
    assert json_file in msg and "annotation index 0 (id 8)" in msg
    assert "field 'image_id' is 99" in msg
