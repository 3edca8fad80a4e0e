"""A small, deterministic synthetic detection dataset ("synthetic shapes").

Each image shows 0..8 filled shapes (circle, square, triangle, cross) on a textured grey
background. Every class has its own colour family (reds, greens, blues, yellows) as well as its
shape, so a detector trained from scratch on a CPU learns to tell the classes apart within
minutes; the work left is finding and boxing the objects, which is what the decoder stages do.
The dataset is written in COCO format so that every code path (json loading, evaluation with
pycocotools) is exercised exactly as with real COCO::

    root/
        train/000000.png ...
        val/000000.png ...
        annotations/train.json
        annotations/val.json

Generation is atomic: everything is written into a temporary sibling directory that is
renamed onto ``root`` only once complete, so a crash or a concurrent process never leaves
a half-written dataset at ``root``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "DIRNAME",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "ensure_synthetic_shapes",
    "generate_synthetic_shapes",
]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Directory name under the datasets root. The suffix changes whenever the generator's output
#: does, so that a copy written by an older version is never taken for the current one.
DIRNAME = "synthetic_shapes_v2"
DEFAULT_NUM_TRAIN = 512
DEFAULT_NUM_VAL = 64
DEFAULT_MIN_SIZE = 112
DEFAULT_MAX_SIZE = 160

_MAX_OBJECTS = 8
_EMPTY_PROB = 0.1
# Object side as a fraction of the shorter image side.
_MIN_REL_SIZE, _MAX_REL_SIZE = 0.12, 0.6
# Two objects may share at most this fraction of the smaller one's box, so every object
# stays mostly visible even though later shapes are painted over earlier ones.
_MAX_OVERLAP = 0.2
_PLACEMENT_TRIES = 30
# RGB range (low, high) of each class's colour family, in CLASSES order.
_CLASS_COLOURS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((200, 0, 0), (255, 70, 70)),  # circle: reds
    ((0, 170, 0), (70, 255, 70)),  # square: greens
    ((0, 0, 190), (70, 90, 255)),  # triangle: blues
    ((210, 190, 0), (255, 255, 50)),  # cross: yellows
)
# How much of its colour a background keeps (0 = pure grey): low, so that no background
# takes on a class colour.
_BACKGROUND_SATURATION = 0.15
_TMP_PREFIX = ".tmp-synthetic-"
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1}


def _annotation_files(root: Path) -> list[Path]:
    return [root / "annotations" / f"{split}.json" for split in ("train", "val")]


def _is_complete(root: Path) -> bool:
    return all(p.is_file() for p in _annotation_files(root))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured, nearly grey background: a gradient, optional stripes and pixel noise.

    Returns:
        uint8 array of shape (height, width, 3).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Mid-range base colours keep room for both darker and brighter objects.
    c0 = rng.uniform(50, 200, size=3).astype(np.float32)
    c1 = np.clip(c0 + rng.uniform(-50, 50, size=3), 30, 225).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(height, width)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    img = c0 + ramp[..., None] * (c1 - c0)
    if rng.random() < 0.6:
        stripe_angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 30)
        phase = (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy) / period
        stripes = (np.floor(phase) % 2)[..., None]
        img = img + stripes * rng.uniform(-30, 30, size=3).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(3, 12), size=img.shape).astype(np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + _BACKGROUND_SATURATION * (img - grey)
    return np.clip(img, 0, 255).astype(np.uint8)


def _class_colour(rng: np.random.Generator, cls_idx: int) -> tuple[int, int, int]:
    """A random colour from the colour family of class ``cls_idx``."""
    low, high = _CLASS_COLOURS[cls_idx]
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high, strict=True))


def _shape_mask(
    rng: np.random.Generator, cls: str, box: tuple[int, int, int, int], size: tuple[int, int]
) -> Image.Image:
    """Draw one shape filling ``box`` (x0, y0, x1, y1; exclusive end) on an "L" mask."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    # PIL treats the end coordinates of ellipse/rectangle as inclusive.
    if cls == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif cls == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    else:
        cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        r = (min(x1 - x0, y1 - y0) - 1) / 2
        theta = rng.uniform(0, 2 * math.pi)
        if cls == "triangle":
            angles = [theta + k * 2 * math.pi / 3 for k in range(3)]
            pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
        else:  # cross: a plus sign with arms one third of its extent wide
            t = r / 3
            base = [(t, r), (t, t), (r, t), (r, -t), (t, -t), (t, -r)]
            base += [(-x, -y) for x, y in base]
            c, s = math.cos(theta), math.sin(theta)
            pts = [(cx + c * x - s * y, cy + s * x + c * y) for x, y in base]
        draw.polygon(pts, fill=255)
    return mask


def _overlap_ok(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for ox0, oy0, ox1, oy1 in others:
        iw = min(x1, ox1) - max(x0, ox0)
        ih = min(y1, oy1) - max(y0, oy0)
        if iw > 0 and ih > 0:
            smaller = min(area, (ox1 - ox0) * (oy1 - oy0))
            if iw * ih > _MAX_OVERLAP * smaller:
                return False
    return True


def _make_image(
    rng: np.random.Generator, height: int, width: int
) -> tuple[Image.Image, list[tuple[int, list[int]]]]:
    """Render one image.

    Returns:
        The RGB image and a list of ``(class_index, [x, y, w, h])`` tight boxes.
    """
    bg = _background(rng, height, width)
    img = Image.fromarray(bg)
    num = 0 if rng.random() < _EMPTY_PROB else int(rng.integers(1, _MAX_OBJECTS + 1))
    side = min(height, width)
    placed: list[tuple[int, int, int, int]] = []
    objects: list[tuple[int, list[int]]] = []
    for _ in range(num):
        cls_idx = int(rng.integers(len(CLASSES)))
        for _ in range(_PLACEMENT_TRIES):
            s = int(round(rng.uniform(_MIN_REL_SIZE, _MAX_REL_SIZE) * side))
            x0 = int(rng.integers(0, width - s + 1))
            y0 = int(rng.integers(0, height - s + 1))
            box = (x0, y0, x0 + s, y0 + s)
            if _overlap_ok(box, placed):
                break
        else:
            continue  # crowded image: give up on this object rather than overlap heavily
        mask = _shape_mask(rng, CLASSES[cls_idx], box, (width, height))
        tight = mask.getbbox()
        if tight is None:  # cannot happen for s >= 12 px, but never emit empty boxes
            continue
        img.paste(_class_colour(rng, cls_idx), (0, 0), mask)
        placed.append(box)
        tx0, ty0, tx1, ty1 = tight
        objects.append((cls_idx, [tx0, ty0, tx1 - tx0, ty1 - ty0]))
    return img, objects


def _save_image(img: Image.Image, path: Path) -> None:
    """Write one image (a separate function so tests can simulate a crash mid-way)."""
    img.save(path, format="PNG")


def _write_split(
    root: Path, split: str, num_images: int, min_size: int, max_size: int, seed: int
) -> None:
    """Render ``num_images`` images of ``split`` into ``root/split`` and write its json."""
    image_dir = root / split
    image_dir.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(num_images):
        # One generator per image: the content of image i does not depend on how many
        # images come before it, so datasets of different lengths share a prefix.
        rng = np.random.default_rng([seed, _SPLIT_SEED_OFFSET[split], i])
        height = int(rng.integers(min_size, max_size + 1))
        width = int(rng.integers(min_size, max_size + 1))
        img, objects = _make_image(rng, height, width)
        file_name = f"{i:06d}.png"
        _save_image(img, image_dir / file_name)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for cls_idx, (x, y, w, h) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls_idx + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"sqr synthetic shapes ({split})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)
        ],
    }
    ann_dir = root / "annotations"
    ann_dir.mkdir(exist_ok=True)
    # Sorted keys and no timestamps: the same seed must give byte-identical files.
    (ann_dir / f"{split}.json").write_text(json.dumps(coco, sort_keys=True) + "\n")


def generate_synthetic_shapes(
    root: str | Path,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    seed: int = 0,
) -> None:
    """Generate the synthetic shapes dataset at ``root`` atomically.

    Args:
        root: Destination directory; must not exist yet (or be empty).
        num_train: Number of training images.
        num_val: Number of validation images.
        min_size: Smallest image side in pixels.
        max_size: Largest image side in pixels (each side is drawn independently from
            ``[min_size, max_size]``).
        seed: Seed; the same arguments always produce byte-identical annotation files
            and images.

    Raises:
        FileExistsError: If ``root`` already holds files.
        ValueError: If the size arguments are invalid.
    """
    root = Path(root).absolute()
    if not 16 <= min_size <= max_size:
        raise ValueError(
            f"synthetic shapes: need 16 <= min_size <= max_size, got min_size={min_size}, "
            f"max_size={max_size}"
        )
    if num_train < 0 or num_val < 0:
        raise ValueError(
            f"synthetic shapes: image counts must be >= 0, got num_train={num_train}, "
            f"num_val={num_val}"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"synthetic shapes: {root} already exists and is not empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + root.name + "-", dir=root.parent))
    try:
        _write_split(tmp, "train", num_train, min_size, max_size, seed)
        _write_split(tmp, "val", num_val, min_size, max_size, seed)
        try:
            # rename(2) is atomic and refuses to replace a non-empty directory, so at most
            # one concurrent generator wins and readers never see a partial dataset.
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root):
                raise
            logger.info("synthetic shapes: %s was created by another process meanwhile", root)
            shutil.rmtree(tmp, ignore_errors=True)
            return
    except BaseException:
        # Includes KeyboardInterrupt: leave nothing behind but the (untouched) root.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "Generated synthetic shapes at %s (%d train / %d val images)", root, num_train, num_val
    )


def ensure_synthetic_shapes(root: str | Path, **kwargs: Any) -> Path:
    """Return ``root``, generating the dataset there first if it is not complete.

    Leftover temporary directories from interrupted runs (only a ``kill -9`` can leave
    one) are ignored; they are named ``.tmp-synthetic-<name>-*`` next to ``root``.

    Args:
        root: Dataset directory.
        **kwargs: Forwarded to :func:`generate_synthetic_shapes` when generating.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: If ``root`` exists with other content but without the
            annotation files (it is never overwritten).
    """
    root = Path(root)
    if _is_complete(root):
        return root
    # An empty directory is fine: rename(2) atomically replaces an empty target directory.
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # A concurrent generator may have just finished; re-check before giving up.
        if _is_complete(root):
            return root
        missing = [str(p) for p in _annotation_files(root) if not p.is_file()]
        raise FileExistsError(
            f"synthetic shapes: {root} exists but lacks {missing}; delete it to regenerate"
        )
    logger.info("synthetic shapes: generating dataset at %s", root)
    try:
        generate_synthetic_shapes(root, **kwargs)
    except FileExistsError:
        # Lost a race against another process that created root after our check.
        if not _is_complete(root):
            raise
    return root
