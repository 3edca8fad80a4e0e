"""Reading COCO-format instance annotations into the toolkit's record format.

A *record* is a plain dict describing one image::

    {
        "file_name": "/abs/path/to/image.jpg",
        "image_id": 139,
        "height": 426,
        "width": 640,
        "annotations": [
            {"bbox": [x0, y0, x1, y1], "category_id": 0, "iscrowd": 0},
            ...
        ],
    }

Boxes are absolute XYXY floats and ``category_id`` is the *contiguous* class index
(``0..K-1``), so models never see the sparse ids used by COCO json files. The mapping back
to the json ids lives in :class:`Metadata`, which evaluation uses when writing results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import reprlib
from dataclasses import dataclass
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

__all__ = ["Metadata", "describe_ids", "load_coco_json", "read_coco_json", "unusable_box_reason"]


@dataclass
class Metadata:
    """Static facts about a dataset that models and evaluators need.

    Attributes:
        name: Registered dataset name (may be empty for ad-hoc loads).
        thing_classes: Class names in contiguous-id order.
        thing_dataset_id_to_contiguous_id: Json category id -> contiguous id ``0..K-1``,
            assigned in increasing order of the json id.
        json_file: Path of the COCO json the dataset was read from (evaluation reads the
            ground truth from here).
        image_root: Directory that image ``file_name`` entries are relative to.
    """

    name: str
    thing_classes: list[str]
    thing_dataset_id_to_contiguous_id: dict[int, int]
    json_file: str
    image_root: str

    @property
    def contiguous_id_to_dataset_id(self) -> dict[int, int]:
        """Inverse of :attr:`thing_dataset_id_to_contiguous_id`."""
        return {v: k for k, v in self.thing_dataset_id_to_contiguous_id.items()}

    @property
    def num_classes(self) -> int:
        """Number of thing classes ``K``."""
        return len(self.thing_classes)


# Long values (a bbox of 10^4 numbers, a base64 string) are shortened in messages.
_repr = reprlib.Repr()
_repr.maxlist, _repr.maxstring, _repr.maxother = 8, 60, 60

# Exact types, as json.load produces them: bool is an int subclass, and a float id like 2.0
# would collide with the int 2. The checks below run once per annotation (860k for COCO
# train), so they are plain type tests and messages are only built on failure.
_NUMBER_TYPES = frozenset({int, float})
_CROWD_TYPES = frozenset({int, float, bool})
_BBOX = "a list of 4 numbers [x, y, width, height]"


def _fail(json_file: str, where: str, entry: dict, key: str, expected: str) -> NoReturn:
    """Raise the error for ``entry[key]``, which is missing or not what was ``expected``."""
    if key not in entry:
        raise ValueError(f"{json_file}: {where} has no {key!r}; expected {expected}")
    value = _repr.repr(entry[key])
    raise ValueError(f"{json_file}: {where}: field {key!r} is {value}; expected {expected}")


def _where(kind: str, index: int, entry: dict, img: dict | None = None) -> str:
    """``image index 3 (id 7, 'a.jpg')``, ``annotation index 0 (id 5) of image id 1 ('a.jpg')``."""
    where = f"{kind} index {index} (" + (f"id {entry['id']!r}" if "id" in entry else "no id")
    if kind == "image" and type(entry.get("file_name")) is str:
        where += f", {entry['file_name']!r}"
    where += ")"
    if img is not None:
        where += f" of image id {img['id']} ({img['file_name']!r})"
    return where


def _entries(json_file: str, dataset: dict[str, Any], key: str, kind: str) -> list[dict]:
    """``dataset[key]``, checked to be a list of objects."""
    fields = {"image": "{'id', 'file_name', 'height', 'width'}", "category": "{'id', 'name'}"}
    expected = f"expected a list of {fields.get(kind, kind)} entries"
    if key not in dataset:
        raise ValueError(f"{json_file}: the file has no {key!r}; {expected}")
    entries = dataset[key]
    if type(entries) is not list:
        raise ValueError(f"{json_file}: {key!r} is a {type(entries).__name__}; {expected}")
    for index, entry in enumerate(entries):
        if type(entry) is not dict:
            raise ValueError(
                f"{json_file}: {kind} index {index} is a {type(entry).__name__}; expected an object"
            )
    return entries


def _check_images(json_file: str, images: list[dict]) -> dict[int, dict]:
    """Check each image entry; return them by id."""
    by_id: dict[int, dict] = {}
    for index, img in enumerate(images):
        image_id = img.get("id")
        if type(image_id) is not int:
            _fail(json_file, _where("image", index, img), img, "id", "an integer")
        if image_id in by_id:
            # By id, the second entry would replace the first, and the first file would train
            # with the second one's boxes.
            raise ValueError(
                f"{json_file}: image id {image_id} is used by both {by_id[image_id]['file_name']!r}"
                f" and {img.get('file_name')!r}; image ids must be unique"
            )
        if type(img.get("file_name")) is not str:
            _fail(json_file, _where("image", index, img), img, "file_name", "a string")
        for key in ("height", "width"):
            size = img.get(key)
            if not (type(size) in _NUMBER_TYPES and size > 0 and float(size).is_integer()):
                where = _where("image", index, img)
                _fail(json_file, where, img, key, "a positive integer (pixels)")
        by_id[image_id] = img
    return by_id


def _check_categories(json_file: str, categories: list[dict]) -> dict[int, str]:
    """Check each category entry; return the names by id."""
    names: dict[int, str] = {}
    for index, cat in enumerate(categories):
        cat_id = cat.get("id")
        if type(cat_id) is not int:
            _fail(json_file, _where("category", index, cat), cat, "id", "an integer")
        if type(cat.get("name")) is not str:
            _fail(json_file, _where("category", index, cat), cat, "name", "a string")
        if cat_id in names:
            # Would be two classes with one json id: a phantom class in training, and no
            # way back from a contiguous class to "its" json id in evaluation.
            raise ValueError(
                f"{json_file}: category id {cat_id} is used by both {names[cat_id]!r} and "
                f"{cat['name']!r}; category ids must be unique"
            )
        names[cat_id] = cat["name"]
    return names


def _check_annotations(
    json_file: str, annotations: list[dict], images: dict[int, dict], categories: dict[int, str]
) -> None:
    """Check each annotation entry against the images and categories."""
    index_by_id: dict[int, int] = {}
    for index, ann in enumerate(annotations):
        ann_id, image_id, bbox = ann.get("id"), ann.get("image_id"), ann.get("bbox")
        img = images.get(image_id) if type(image_id) is int else None
        if img is None:
            where = _where("annotation", index, ann)
            _fail(json_file, where, ann, "image_id", "one of the json's image ids")
        # COCO indexes annotations by id (a repeated one replaces the other) and COCOeval
        # marks "unmatched" with id 0.
        if not (type(ann_id) is int and ann_id > 0):
            where = _where("annotation", index, ann, img)
            _fail(json_file, where, ann, "id", "a positive integer")
        if ann_id in index_by_id:
            first = index_by_id[ann_id]
            earlier = _where(
                "annotation", first, annotations[first], images[annotations[first]["image_id"]]
            )
            raise ValueError(
                f"{json_file}: annotation id {ann_id} is used by two annotations, {earlier} and "
                f"{_where('annotation', index, ann, img)}; annotation ids must be unique"
            )
        index_by_id[ann_id] = index
        if type(ann.get("category_id")) is not int or ann["category_id"] not in categories:
            where = _where("annotation", index, ann, img)
            expected = f"one of the json's category ids {sorted(categories)}"
            _fail(json_file, where, ann, "category_id", expected)
        if not (
            type(bbox) is list and len(bbox) == 4 and _NUMBER_TYPES.issuperset(map(type, bbox))
        ):
            _fail(json_file, _where("annotation", index, ann, img), ann, "bbox", _BBOX)
        crowd = ann.get("iscrowd", 0)
        if type(crowd) not in _CROWD_TYPES or crowd not in (0, 1):  # true / false are clear
            _fail(json_file, _where("annotation", index, ann, img), ann, "iscrowd", "0 or 1")
        if "area" in ann and type(ann["area"]) not in _NUMBER_TYPES:
            _fail(json_file, _where("annotation", index, ann, img), ann, "area", "a number")


def read_coco_json(json_file: str) -> dict[str, Any]:
    """Read a COCO instances json and check every field the toolkit relies on.

    The one check of a json's structure, shared by :func:`load_coco_json` (training) and
    :class:`sqr.evaluation.COCOEvaluator` (its ground truth). Box *values* are not judged here:
    a non-finite or empty box is well-formed, and each reader decides what to do with it (see
    :func:`unusable_box_reason`).

    Args:
        json_file: Path of the json.

    Returns:
        The parsed json, with ``"annotations"`` set to ``[]`` if the file has none.

    Raises:
        FileNotFoundError: If ``json_file`` does not exist.
        ValueError: Naming the file, the entry (index and id) and the field, if the file is not
            JSON or an entry lacks a field or holds a value of the wrong kind: ``images`` with
            unique integer ``id``, string ``file_name``, positive integer ``height`` and
            ``width``; ``categories`` with unique integer ``id`` and string ``name``;
            ``annotations`` with unique positive integer ``id``, an ``image_id`` and a
            ``category_id`` that the json defines, ``bbox`` of 4 numbers, ``iscrowd`` (if
            present) 0 or 1 and ``area`` (if present) a number.
    """
    json_file = os.fspath(json_file)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file!r}")
    with open(json_file, encoding="utf-8") as f:
        try:
            dataset = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not valid JSON ({e})") from None
    if not isinstance(dataset, dict):
        raise ValueError(
            f"{json_file}: the file holds a {type(dataset).__name__}; expected a COCO object "
            "with 'images', 'annotations' and 'categories'"
        )
    images = _check_images(json_file, _entries(json_file, dataset, "images", "image"))
    categories = _check_categories(
        json_file, _entries(json_file, dataset, "categories", "category")
    )
    # COCO's image_info files (test-dev) list images only.
    dataset.setdefault("annotations", [])
    dataset["annotations"] = _entries(json_file, dataset, "annotations", "annotation")
    _check_annotations(json_file, dataset["annotations"], images, categories)
    return dataset


def unusable_box_reason(bbox: list[float], width: float, height: float) -> str | None:
    """Why no box inside the image can match a ground-truth box, or None if one can.

    The rule both training (which drops such boxes) and evaluation (which scores them, as
    COCO does, and warns) apply.

    Args:
        bbox: The json's ``[x, y, w, h]``.
        width: Width of the image, in pixels.
        height: Height of the image, in pixels.

    Returns:
        ``"non-finite or non-positive"`` (a NaN or infinite value, or ``w <= 0`` or ``h <= 0``),
        ``"wholly outside their image"`` (no overlap of positive area with the image), or None.
    """
    x, y, w, h = (float(v) for v in bbox)
    # A NaN passes a size test and an infinite size survives it.
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return "non-finite or non-positive"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "wholly outside their image"
    return None


def describe_ids(ids: list[int], limit: int = 10) -> str:
    """``[3, 8]``, or the first ``limit`` ids and how many more, for log messages."""
    if len(ids) <= limit:
        return str(ids)
    return f"{ids[:limit]} and {len(ids) - limit} more"


def _image_path(json_file: str, image_root_abs: str, img: dict[str, Any]) -> str:
    """Join an image's json ``file_name`` to the image root, refusing paths that leave it.

    The check is lexical (``normpath``), not ``realpath``: symlinked image folders are
    legitimate and must keep working.

    Args:
        json_file: Path of the json, for error messages.
        image_root_abs: Normalised absolute image root.
        img: The image's json entry.

    Returns:
        Normalised absolute path of the image.

    Raises:
        ValueError: If the path lies outside ``image_root_abs``, e.g. via ``..`` or an
            absolute ``file_name`` elsewhere.
    """
    path = os.path.normpath(os.path.join(image_root_abs, img["file_name"]))
    if os.path.commonpath([image_root_abs, path]) != image_root_abs:
        raise ValueError(
            f"{json_file}: image id {img['id']} has file_name {img['file_name']!r}, which "
            f"points outside the image root {image_root_abs!r}"
        )
    return path


def load_coco_json(
    json_file: str, image_root: str, dataset_name: str = ""
) -> tuple[list[dict], Metadata]:
    """Load COCO instance annotations as a list of records.

    The json is checked by :func:`read_coco_json`. Boxes that no prediction inside the image
    can match (see :func:`unusable_box_reason`: a non-finite value, a non-positive width or
    height, or no overlap with the image) teach nothing and are dropped, with one warning for
    the whole file that gives their count and ids; evaluation still scores them, as COCO does.
    Images without annotations are kept as negative examples.

    Args:
        json_file: Path to a COCO instances json.
        image_root: Directory containing the images; each record's ``file_name`` is
            ``image_root/<json file_name>`` made absolute and normalised, and must stay
            inside ``image_root``.
        dataset_name: Name stored in the returned metadata (for messages only).

    Returns:
        ``(records, metadata)`` where ``records`` is ordered by image id and follows the
        format described in the module docstring.

    Raises:
        FileNotFoundError: If ``json_file`` does not exist.
        ValueError: If the json is malformed (see :func:`read_coco_json`) or an image's
            ``file_name`` points outside ``image_root``.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    dataset = read_coco_json(json_file)

    # Contiguous ids follow the sorted json ids so that the mapping is stable regardless of
    # the order categories happen to be listed in the file.
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    cat_ids = sorted(names)
    thing_classes = [names[c] for c in cat_ids]
    id_map = {cid: i for i, cid in enumerate(cat_ids)}

    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in dataset["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)

    image_root_abs = os.path.abspath(image_root)
    records: list[dict[str, Any]] = []
    dropped: dict[str, list[int]] = {}
    for img in sorted(dataset["images"], key=lambda img: img["id"]):
        record: dict[str, Any] = {
            "file_name": _image_path(json_file, image_root_abs, img),
            "image_id": img["id"],
            "height": int(img["height"]),
            "width": int(img["width"]),
        }
        annotations = []
        for ann in anns_by_image.get(img["id"], []):
            reason = unusable_box_reason(ann["bbox"], record["width"], record["height"])
            if reason is not None:
                dropped.setdefault(reason, []).append(ann["id"])
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            annotations.append(
                {
                    "bbox": [x, y, x + w, y + h],
                    "category_id": id_map[ann["category_id"]],
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
        record["annotations"] = annotations
        records.append(record)

    if dropped:
        logger.warning(
            "%s: dropped %d annotation(s) that training cannot use: %s. COCO evaluation of "
            "this file still counts the non-crowd ones as ground truth (misses).",
            json_file,
            sum(map(len, dropped.values())),
            ", ".join(
                f"{len(ids)} {why} (ids {describe_ids(ids)})" for why, ids in dropped.items()
            ),
        )
    logger.info(
        "Loaded %d images with %d annotations in %d classes from %s",
        len(records),
        sum(len(r["annotations"]) for r in records),
        len(thing_classes),
        json_file,
    )
    metadata = Metadata(
        name=dataset_name,
        thing_classes=thing_classes,
        thing_dataset_id_to_contiguous_id=id_map,
        json_file=json_file,
        image_root=image_root,
    )
    return records, metadata
