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


def load_coco_json(
    json_file: str, image_root: str, dataset_name: str = ""
) -> tuple[list[dict], Metadata]:
    """Load COCO instance annotations as a list of records.

    Boxes with non-positive width or height are dropped (with one warning for the whole
    file); images without annotations are kept as negative examples.

    Args:
        json_file: Path to a COCO instances json.
        image_root: Directory containing the images; each record's ``file_name`` is
            ``image_root/<json file_name>`` made absolute.
        dataset_name: Name stored in the returned metadata (for messages only).

    Returns:
        ``(records, metadata)`` where ``records`` is ordered by image id and follows the
        format described in the module docstring.

    Raises:
        FileNotFoundError: If ``json_file`` does not exist.
        ValueError: If an annotation refers to a category id that the json's
            ``categories`` list does not define, or lacks a ``bbox``.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file!r}")

    coco = _read_coco(json_file)

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
            "file_name": os.path.join(image_root_abs, img["file_name"]),
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
            if w <= 0 or h <= 0:
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
            "%s: dropped %d annotation(s) whose box has non-positive width or height",
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
