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

import contextlib
import io
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from pycocotools.coco import COCO

logger = logging.getLogger(__name__)

__all__ = ["Metadata", "load_coco_json"]


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


def _read_coco(json_file: str) -> COCO:
    """Parse a COCO json with pycocotools, keeping its progress prints off stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(json_file)


def _check_images(json_file: str, images: list[dict[str, Any]]) -> None:
    """Check the raw json ``images`` list before ``COCO.imgs`` is trusted.

    ``COCO.imgs`` is keyed by id, so a repeated id keeps only the last entry and the earlier
    file silently receives its annotations.

    Args:
        json_file: Path of the json, for error messages.
        images: The json's ``images`` entries, in file order.

    Raises:
        ValueError: If an image id is not an integer or is used by two entries.
    """
    file_name_by_id: dict[int, str | None] = {}
    for img in images:
        image_id = img["id"]
        # bool is an int subclass and a float id like 2.0 would collide with the int 2.
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise ValueError(
                f"{json_file}: image entry with id {image_id!r} (file_name "
                f"{img.get('file_name')!r}) has a non-integer id; image ids must be integers"
            )
        if image_id in file_name_by_id:
            raise ValueError(
                f"{json_file}: image id {image_id} is used by both "
                f"{file_name_by_id[image_id]!r} and {img.get('file_name')!r}; image ids must be "
                "unique"
            )
        file_name_by_id[image_id] = img.get("file_name")


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

    Boxes with a non-finite coordinate or a non-positive width or height are dropped (with
    one warning for the whole file); images without annotations are kept as negative examples.

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
        ValueError: If an image id is not an integer or is repeated, an image's
            ``file_name`` points outside ``image_root``, or an annotation refers to an image
            id or category id that the json does not define, or lacks a ``bbox``.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file!r}")

    coco = _read_coco(json_file)
    _check_images(json_file, coco.dataset.get("images", []))
    # pycocotools indexes such annotations under their image_id and nothing reads them back.
    for ann in coco.dataset.get("annotations", []):
        if ann["image_id"] not in coco.imgs:
            raise ValueError(
                f"{json_file}: annotation id {ann.get('id')} has image_id {ann['image_id']!r}, "
                "which is not among the json's images"
            )

    # Contiguous ids follow the sorted json ids so that the mapping is stable regardless of
    # the order categories happen to be listed in the file.
    cat_ids = sorted(coco.getCatIds())
    cats = coco.loadCats(cat_ids)
    thing_classes = [c["name"] for c in cats]
    id_map = {cid: i for i, cid in enumerate(cat_ids)}

    image_root_abs = os.path.abspath(image_root)
    records: list[dict[str, Any]] = []
    num_dropped = 0
    for image_id in sorted(coco.imgs):
        img = coco.imgs[image_id]
        record: dict[str, Any] = {
            "file_name": _image_path(json_file, image_root_abs, img),
            "image_id": int(image_id),
            "height": int(img["height"]),
            "width": int(img["width"]),
        }
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            cat_id = ann.get("category_id")
            if cat_id not in id_map:
                raise ValueError(
                    f"{json_file}: annotation id {ann.get('id')} of image "
                    f"{img['file_name']!r} (id {image_id}) has category_id {cat_id!r}, "
                    f"which is not among the json's categories {cat_ids}"
                )
            if "bbox" not in ann:
                raise ValueError(
                    f"{json_file}: annotation id {ann.get('id')} of image "
                    f"{img['file_name']!r} (id {image_id}) has no 'bbox'"
                )
            x, y, w, h = (float(v) for v in ann["bbox"])
            # A NaN passes the size test below and an infinite size survives it, so both
            # would train as a box clamped to the image edge.
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                num_dropped += 1
                continue
            annotations.append(
                {
                    "bbox": [x, y, x + w, y + h],
                    "category_id": id_map[cat_id],
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
        record["annotations"] = annotations
        records.append(record)

    if num_dropped:
        logger.warning(
            "%s: dropped %d annotation(s) whose box is non-finite or non-positive (NaN or "
            "infinite x, y, w or h, or w <= 0 or h <= 0)",
            json_file,
            num_dropped,
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
