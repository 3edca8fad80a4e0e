"""COCOEvaluator runs faster-coco-eval; these tests prove its numbers equal pycocotools' COCOeval.

The reference path is pycocotools, run on the very results json the evaluator writes, with the
evaluator's image ids and maxDets. Every metric the evaluator reports (the six COCO metrics and
each ``AP-<class>``) must agree to 1e-9, NaN where pycocotools gives NaN.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sqr.data.catalog import load_dataset, register_coco_instances
from sqr.evaluation import COCOEvaluator
from sqr.evaluation.coco_evaluation import _per_category_ap, _summarize_precision


def _reference_metrics(json_file: str, results_json: Path, image_ids: list[int], max_dets: int):
    """The evaluator's metrics computed from pycocotools' COCOeval."""
    results = json.loads(results_json.read_text())
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO(json_file)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        coco_eval.params.imgIds = image_ids
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
    precision = coco_eval.eval["precision"]
    metrics = _summarize_precision(precision, coco_eval.params.iouThrs)
    names = [c["name"] for c in coco_gt.loadCats(coco_eval.params.catIds)]
    metrics.update(zip((f"AP-{n}" for n in names), _per_category_ap(precision), strict=True))
    return metrics


def _assert_same_as_pycocotools(
    name: str, outputs: list[dict], tmp_path: Path, max_dets: int = 100
) -> dict:
    records, metadata = load_dataset(name)
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path), max_dets_per_image=max_dets)
    evaluator.reset()
    evaluator.process(records, outputs)
    results = evaluator.evaluate()["bbox"]
    expected = _reference_metrics(
        metadata.json_file,
        tmp_path / "inference" / "coco_instances_results.json",
        [r["image_id"] for r in records],
        max_dets,
    )
    assert list(results) == list(expected)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    return results


def _output(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float64),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _noisy_outputs(records: list[dict], num_classes: int, max_false: int, seed: int) -> list[dict]:
    """Per image: most ground-truth boxes jittered (sometimes with a wrong class) and up to
    ``max_false`` random boxes; scores rounded to 0.01 so that ties occur."""
    rng = random.Random(seed)
    outputs = []
    for r in records:
        h, w = r["height"], r["width"]
        boxes, scores, labels = [], [], []
        for ann in r["annotations"]:
            if rng.random() < 0.2:
                continue  # a miss
            x0, y0, x1, y1 = ann["bbox"]
            jitter = [rng.gauss(0, 0.1) * (x1 - x0 if i % 2 == 0 else y1 - y0) for i in range(4)]
            boxes.append([x0 + jitter[0], y0 + jitter[1], x1 + jitter[2], y1 + jitter[3]])
            wrong = rng.random() < 0.1
            labels.append(rng.randrange(num_classes) if wrong else ann["category_id"])
            scores.append(round(rng.random(), 2))
        for _ in range(rng.randint(0, max_false)):
            x0, y0 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
            boxes.append([x0, y0, rng.uniform(x0 + 1, w), rng.uniform(y0 + 1, h)])
            labels.append(rng.randrange(num_classes))
            scores.append(round(rng.random(), 2))
        outputs.append(_output(boxes, scores, labels))
    return outputs


def _shifted_outputs(records: list[dict], shift: float) -> list[dict]:
    """Score-1 copies of the ground truth moved right by ``shift`` times their width."""
    outputs = []
    for r in records:
        boxes = [a["bbox"] for a in r["annotations"]]
        boxes = [
            [x0 + shift * (x1 - x0), y0, x1 + shift * (x1 - x0), y1] for x0, y0, x1, y1 in boxes
        ]
        labels = [a["category_id"] for a in r["annotations"]]
        outputs.append(_output(boxes, [1.0] * len(boxes), labels))
    return outputs


@pytest.fixture(scope="module")
def synthetic_val(synthetic_root: Path) -> str:
    name = f"test_faster_eval_val_{uuid.uuid4().hex[:8]}"
    register_coco_instances(
        name, str(synthetic_root / "annotations" / "val.json"), str(synthetic_root / "val")
    )
    return name


@pytest.mark.parametrize("case", ["perfect", "shifted", "random"])
def test_synthetic_val_matches_pycocotools(synthetic_val: str, case: str, tmp_path: Path) -> None:
    records, metadata = load_dataset(synthetic_val)
    outputs = {
        "perfect": lambda: _shifted_outputs(records, 0.0),
        "shifted": lambda: _shifted_outputs(records, 0.1),
        "random": lambda: _noisy_outputs(records, metadata.num_classes, max_false=30, seed=1),
    }[case]()
    results = _assert_same_as_pycocotools(synthetic_val, outputs, tmp_path)
    if case == "perfect":
        assert results["AP"] == pytest.approx(100.0)


# Json category ids of the stress set: sparse, listed out of order, and "bus" (id 40) has no
# ground truth, so its AP is NaN in both libraries.
_STRESS_CATEGORIES = {11: "dog", 2: "person", 5: "car", 17: "cat", 40: "bus"}


@pytest.fixture(scope="module")
def stress_set(tmp_path_factory: pytest.TempPathFactory) -> str:
    """200 images of 640 x 480 with boxes from 3 to 400 px (all three COCO size ranges),
    about 10% crowd boxes and every fifth image without any ground truth."""
    rng = random.Random(0)
    gt_ids = [i for i in _STRESS_CATEGORIES if i != 40]
    images, annotations = [], []
    for image_id in range(1, 201):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        if image_id % 5 == 0:
            continue
        for _ in range(rng.randint(1, 12)):
            w, h = rng.uniform(3, 400), rng.uniform(3, 400)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": rng.choice(gt_ids),
                    "bbox": [x, y, w, h],
                    # As for instance masks, the area is below the box's; it picks the size range.
                    "area": w * h * rng.uniform(0.5, 1.0),
                    "iscrowd": int(rng.random() < 0.1),
                }
            )
    categories = [{"id": i, "name": n} for i, n in _STRESS_CATEGORIES.items()]
    root = tmp_path_factory.mktemp("stress")
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "stress.json").write_text(json.dumps(data))
    name = f"test_faster_eval_stress_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, str(root / "stress.json"), str(root))
    return name


@pytest.mark.parametrize("max_dets", [100, 20])
def test_stress_set_matches_pycocotools(stress_set: str, max_dets: int, tmp_path: Path) -> None:
    records, metadata = load_dataset(stress_set)
    # Up to 150 false positives per image, so that the maxDets cut matters.
    outputs = _noisy_outputs(records, metadata.num_classes, max_false=150, seed=2)
    results = _assert_same_as_pycocotools(stress_set, outputs, tmp_path, max_dets=max_dets)
    assert math.isnan(results["AP-bus"])
    assert all(0.0 < results[f"AP-{n}"] < 100.0 for n in ("person", "car", "dog", "cat"))
    assert not any(np.isnan(results[k]) for k in ("AP", "APs", "APm", "APl"))
