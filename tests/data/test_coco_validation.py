"""Tests for the checks sqr.data.coco makes on a COCO json before anything trusts it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sqr.data.coco import load_coco_json, read_coco_json

CATEGORIES = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
IMAGES = [
    {"id": 1, "file_name": "a.jpg", "height": 30, "width": 40},
    {"id": 2, "file_name": "b.jpg", "height": 30, "width": 40},
]


def _ann(ann_id: object, image_id: object, bbox: object, cat: object = 1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def _write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


def _dataset(annotations: list, images: list = IMAGES, categories: list = CATEGORIES) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories}


def _error(tmp_path: Path, data: dict) -> str:
    """The ValueError message of loading ``data``; the same check guards both readers."""
    json_file = _write(tmp_path, data)
    with pytest.raises(ValueError) as from_loader:
        load_coco_json(json_file, str(tmp_path))
    with pytest.raises(ValueError) as from_reader:
        read_coco_json(json_file)
    assert str(from_loader.value) == str(from_reader.value)
    message = str(from_loader.value)
    assert message.startswith(f"{json_file}: ")
    return message


# ---------------------------------------------------------------- annotation ids (item 1)


def test_duplicate_annotation_id_names_both_images(tmp_path: Path) -> None:
    # COCO.anns is keyed by id: evaluation kept one of the two boxes and scored perfect
    # predictions AP 50.5.
    message = _error(tmp_path, _dataset([_ann(1, 1, [0, 0, 5, 5]), _ann(1, 2, [1, 1, 5, 5])]))
    assert "annotation id 1 is used by two annotations" in message
    assert "image id 1 ('a.jpg')" in message and "image id 2 ('b.jpg')" in message
    assert "unique" in message


@pytest.mark.parametrize("bad_id", [0, -3])
def test_non_positive_annotation_id_is_refused(tmp_path: Path, bad_id: int) -> None:
    # COCOeval uses id 0 to mean "no match": an annotation with id 0 is never matched.
    message = _error(tmp_path, _dataset([_ann(bad_id, 2, [0, 0, 5, 5])]))
    assert f"annotation index 0 (id {bad_id}) of image id 2 ('b.jpg')" in message
    assert "field 'id'" in message and "expected a positive integer" in message


@pytest.mark.parametrize("bad_id", ["7", 7.0, True, None])
def test_non_integer_annotation_id_is_refused(tmp_path: Path, bad_id: object) -> None:
    message = _error(tmp_path, _dataset([_ann(3, 1, [0, 0, 5, 5]), _ann(bad_id, 1, [0, 0, 5, 5])]))
    assert f"annotation index 1 (id {bad_id!r})" in message
    assert f"field 'id' is {bad_id!r}; expected a positive integer" in message


def test_missing_annotation_id_is_refused(tmp_path: Path) -> None:
    ann = _ann(0, 1, [0, 0, 5, 5])
    del ann["id"]
    message = _error(tmp_path, _dataset([ann]))
    assert "annotation index 0 (no id)" in message and "has no 'id'" in message


# ---------------------------------------------------------------- category ids (item 3)


def test_duplicate_category_id_names_it(tmp_path: Path) -> None:
    # Gave the classes ['x2', 'x2', 'y'] in training and KeyError: 0 in evaluation.
    categories = [{"id": 2, "name": "x"}, {"id": 2, "name": "x2"}, {"id": 5, "name": "y"}]
    message = _error(tmp_path, _dataset([], categories=categories))
    assert "category id 2 is used by both 'x' and 'x2'" in message and "unique" in message


# ---------------------------------------------------------------- malformed fields (item 11)


def _without(entry: dict, key: str) -> dict:
    return {k: v for k, v in entry.items() if k != key}


MALFORMED = {
    "missing categories": (
        {"images": IMAGES, "annotations": []},
        ["has no 'categories'", "expected a list of {'id', 'name'} entries"],
    ),
    "categories not a list": (
        _dataset([], categories={"id": 1}),
        ["'categories' is a dict; expected a list"],
    ),
    "category id a string": (
        _dataset([], categories=[{"id": "1", "name": "one"}]),
        ["category index 0 (id '1')", "field 'id' is '1'; expected an integer"],
    ),
    "category without name": (
        _dataset([], categories=[{"id": 4}]),
        ["category index 0 (id 4)", "has no 'name'", "expected a string"],
    ),
    "image without height": (
        _dataset([], images=[IMAGES[0], _without(IMAGES[1], "height")]),
        ["image index 1 (id 2, 'b.jpg')", "has no 'height'", "expected a positive integer"],
    ),
    "image width zero": (
        _dataset([], images=[{**IMAGES[0], "width": 0}]),
        ["image index 0 (id 1, 'a.jpg')", "field 'width' is 0; expected a positive integer"],
    ),
    "image without file_name": (
        _dataset([], images=[_without(IMAGES[0], "file_name")]),
        ["image index 0 (id 1)", "has no 'file_name'", "expected a string"],
    ),
    "bbox of 3 values": (
        _dataset([_ann(5, 1, [0, 0, 5])]),
        [
            "annotation index 0 (id 5) of image id 1 ('a.jpg')",
            "field 'bbox' is [0, 0, 5]; expected a list of 4 numbers [x, y, width, height]",
        ],
    ),
    "bbox a string": (
        _dataset([_ann(5, 1, "0 0 5 5")]),
        ["annotation index 0 (id 5)", "field 'bbox' is '0 0 5 5'; expected a list of 4 numbers"],
    ),
    "bbox with a string value": (
        _dataset([_ann(5, 1, [0, "0", 5, 5])]),
        ["field 'bbox' is [0, '0', 5, 5]; expected a list of 4 numbers"],
    ),
    "bbox missing": (
        _dataset([_without(_ann(5, 1, []), "bbox")]),
        ["annotation index 0 (id 5) of image id 1 ('a.jpg') has no 'bbox'", "4 numbers"],
    ),
    "category_id a string": (
        _dataset([_ann(5, 1, [0, 0, 5, 5], cat="1")]),
        ["annotation index 0 (id 5)", "field 'category_id' is '1'", "one of the json's category"],
    ),
    "category_id unknown": (
        _dataset([_ann(5, 1, [0, 0, 5, 5], cat=3)]),
        ["annotation index 0 (id 5)", "field 'category_id' is 3", "ids [1, 2]"],
    ),
    "iscrowd a string": (
        _dataset([_ann(5, 1, [0, 0, 5, 5], iscrowd="no")]),
        ["annotation index 0 (id 5)", "field 'iscrowd' is 'no'; expected 0 or 1"],
    ),
    "image_id missing": (
        _dataset([_ann(4, 1, [0, 0, 5, 5]), _without(_ann(5, 1, [0, 0, 5, 5]), "image_id")]),
        ["annotation index 1 (id 5) has no 'image_id'", "one of the json's image ids"],
    ),
    "image_id unknown": (
        _dataset([_ann(5, 99, [0, 0, 5, 5])]),
        ["annotation index 0 (id 5)", "field 'image_id' is 99", "one of the json's image ids"],
    ),
    "annotation not an object": (
        _dataset([[0, 0, 5, 5]]),
        ["annotation index 0 is a list; expected an object"],
    ),
    "top level a list": ([], ["the file holds a list; expected a COCO object"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_field_names_file_entry_and_expectation(tmp_path: Path, case: str) -> None:
    data, fragments = MALFORMED[case]
    message = _error(tmp_path, data)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_invalid_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=f"^{path}: not valid JSON"):
        load_coco_json(str(path), str(tmp_path))


def test_well_formed_variants_are_accepted(tmp_path: Path) -> None:
    # Annotations may be absent (COCO's image_info files), iscrowd absent or a bool, and
    # bbox values int or float.
    data = {"images": IMAGES, "categories": CATEGORIES}
    records, _ = load_coco_json(_write(tmp_path, data), str(tmp_path))
    assert [r["annotations"] for r in records] == [[], []]
    anns = [_ann(1, 1, [0, 0, 5, 5]), _ann(2, 1, [0.5, 1, 2, 3.5], iscrowd=True)]
    records, _ = load_coco_json(_write(tmp_path, _dataset(anns)), str(tmp_path))
    assert records[0]["annotations"] == [
        {"bbox": [0.0, 0.0, 5.0, 5.0], "category_id": 0, "iscrowd": 0},
        {"bbox": [0.5, 1.0, 2.5, 4.5], "category_id": 0, "iscrowd": 1},
    ]


# ---------------------------------------------------------------- untrainable boxes (item 2)


def test_boxes_outside_the_image_are_dropped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Images are 40 wide and 30 high. The mapper clipped these to nothing and dropped them
    # without a word, while evaluation still scores them.
    anns = [
        _ann(11, 1, [40, 0, 5, 5]),  # starts at the right edge
        _ann(12, 1, [-6, 0, 5, 5]),  # ends left of the image
        _ann(13, 1, [0, 30, 5, 5]),  # starts at the bottom edge
        _ann(14, 1, [0, -5, 5, 5]),  # ends exactly at the top edge
        _ann(15, 1, [0, 0, 0, 5]),  # zero width
        _ann(16, 1, [38, 28, 5, 5]),  # partly inside: kept, the mapper clips it
    ]
    json_file = _write(tmp_path, _dataset(anns))
    with caplog.at_level(logging.WARNING, logger="sqr.data.coco"):
        records, _ = load_coco_json(json_file, str(tmp_path))
    assert records[0]["annotations"] == [
        {"bbox": [38.0, 28.0, 43.0, 33.0], "category_id": 0, "iscrowd": 0}
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0]
    assert json_file in message and "dropped 5 annotation(s)" in message
    assert "1 non-finite or non-positive (ids [15])" in message
    assert "4 wholly outside their image (ids [11, 12, 13, 14])" in message
