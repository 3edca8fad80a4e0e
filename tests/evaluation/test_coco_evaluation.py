"""Tests for COCOEvaluator and inference_on_dataset on the synthetic shapes dataset."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
import torch

from sqr.data.catalog import load_dataset, register_coco_instances
from sqr.evaluation import COCOEvaluator, inference_on_dataset


@pytest.fixture(scope="module")
def val_name(synthetic_root: Path) -> str:
    name = f"test_eval_synthetic_val_{uuid.uuid4().hex[:8]}"
    register_coco_instances(
        name, str(synthetic_root / "annotations" / "val.json"), str(synthetic_root / "val")
    )
    return name


def _ground_truth_outputs(records: list[dict], shift: float = 0.0) -> list[dict]:
    """Score-1 predictions equal to the ground truth, optionally moved right by
    ``shift`` times each box's width."""
    outputs = []
    for r in records:
        boxes = torch.tensor([a["bbox"] for a in r["annotations"]], dtype=torch.float32)
        boxes = boxes.reshape(-1, 4)
        dx = shift * (boxes[:, 2] - boxes[:, 0])
        boxes[:, 0] += dx
        boxes[:, 2] += dx
        labels = torch.tensor([a["category_id"] for a in r["annotations"]], dtype=torch.int64)
        outputs.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": labels})
    return outputs


def _evaluate(name: str, outputs: list[dict], output_dir: str | None = None) -> dict:
    records, _ = load_dataset(name)
    evaluator = COCOEvaluator(name, output_dir=output_dir)
    evaluator.reset()
    # Two batches, to exercise accumulation across process() calls.
    half = len(records) // 2
    evaluator.process(records[:half], outputs[:half])
    evaluator.process(records[half:], outputs[half:])
    return evaluator.evaluate()


def test_perfect_predictions(val_name: str, tmp_path: Path) -> None:
    records, meta = load_dataset(val_name)
    assert sum(len(r["annotations"]) for r in records) > 0
    results = _evaluate(val_name, _ground_truth_outputs(records), str(tmp_path))
    bbox = results["bbox"]
    # The six COCO metrics, then detectron2's per-category names.
    per_category = [f"AP-{name}" for name in meta.thing_classes]
    assert list(bbox) == ["AP", "AP50", "AP75", "APs", "APm", "APl", *per_category]
    for key in per_category:
        assert bbox[key] == pytest.approx(100.0, abs=1e-6)
    assert bbox["AP"] == pytest.approx(100.0, abs=1e-6)
    assert bbox["AP50"] == pytest.approx(100.0, abs=1e-6)
    assert bbox["AP75"] == pytest.approx(100.0, abs=1e-6)
    for key in ("APs", "APm", "APl"):  # 100, or NaN where no object has that size
        assert math.isnan(bbox[key]) or bbox[key] == pytest.approx(100.0, abs=1e-6)

    # Results json in COCO format, with json category ids and XYWH boxes.
    path = tmp_path / "inference" / "coco_instances_results.json"
    written = json.loads(path.read_text())
    assert len(written) == sum(len(r["annotations"]) for r in records)
    gt = json.loads(Path(meta.json_file).read_text())
    gt_boxes = sorted((a["image_id"], a["category_id"], *a["bbox"]) for a in gt["annotations"])
    pred = sorted((p["image_id"], p["category_id"], *p["bbox"]) for p in written)
    assert len(pred) == len(gt_boxes)
    for predicted, expected in zip(pred, gt_boxes, strict=True):
        assert predicted == pytest.approx(expected)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_shifted_predictions(val_name: str) -> None:
    records, _ = load_dataset(val_name)
    # Moving a w x h box right by 0.1 w leaves an overlap of 0.9 w x h and a union of
    # 1.1 w x h, so IoU = 0.9 / 1.1 = 0.818 for every box. Of COCO's ten IoU thresholds
    # 0.50, 0.55, ..., 0.95, the seven up to 0.80 count every prediction as a true positive
    # (AP 100 at each), the three from 0.85 count every one as a false positive (AP 0).
    # Hence AP = 7 / 10 * 100 = 70, AP50 = 100 and AP75 = 100.
    results = _evaluate(val_name, _ground_truth_outputs(records, shift=0.1))
    bbox = results["bbox"]
    assert bbox["AP"] == pytest.approx(70.0, abs=0.05)
    assert bbox["AP50"] == pytest.approx(100.0, abs=0.05)
    assert bbox["AP75"] == pytest.approx(100.0, abs=0.05)


def test_no_predictions(val_name: str, tmp_path: Path) -> None:
    records, _ = load_dataset(val_name)
    empty = [
        {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
        for _ in records
    ]
    bbox = _evaluate(val_name, empty, str(tmp_path))["bbox"]
    per_category = ["AP-circle", "AP-square", "AP-triangle", "AP-cross"]
    assert list(bbox) == ["AP", "AP50", "AP75", "APs", "APm", "APl", *per_category]
    # Every class has objects, so 0; a size without objects stays undefined (NaN), as with any
    # predictions (test_same_answer_with_no_prediction_or_one_useless_one).
    assert all(bbox[key] == 0.0 for key in ["AP", "AP50", "AP75", *per_category])
    assert all(bbox[key] == 0.0 or math.isnan(bbox[key]) for key in ("APs", "APm", "APl"))
    path = tmp_path / "inference" / "coco_instances_results.json"
    assert json.loads(path.read_text()) == []


def test_bad_label_names_image(val_name: str) -> None:
    records, _ = load_dataset(val_name)
    evaluator = COCOEvaluator(val_name)
    bad = {
        "boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]),
        "scores": torch.ones(1),
        "labels": torch.tensor([17]),
    }
    with pytest.raises(ValueError, match=f"image {records[0]['image_id']}.*label 17"):
        evaluator.process(records[:1], [bad])


class _OracleModel(torch.nn.Module):
    """Returns the ground truth of each input; records the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen_training: list[bool] = []
        self.seen_grad: list[bool] = []

    def forward(self, inputs: list[dict]) -> list[dict]:
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        return _ground_truth_outputs(inputs)


def test_inference_on_dataset(val_name: str) -> None:
    records, _ = load_dataset(val_name)
    loader = [records[i : i + 3] for i in range(0, len(records), 3)]
    model = _OracleModel()
    model.train()
    results = inference_on_dataset(model, loader, COCOEvaluator(val_name))
    assert results["bbox"]["AP"] == pytest.approx(100.0, abs=1e-6)
    assert model.seen_training == [False] * len(loader)
    assert model.seen_grad == [False] * len(loader)
    assert model.training  # previous mode restored


def _strict_json(path: Path):
    """Parse ``path`` refusing the non-standard tokens NaN / Infinity that strict JSON lacks."""

    def refuse(token: str):
        raise ValueError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_boxes_never_score(val_name: str, tmp_path: Path, caplog) -> None:
    # pycocotools matches a NaN box to every ground truth: these predictions scored AP 100.
    records, _ = load_dataset(val_name)
    outputs = _ground_truth_outputs(records)
    num = sum(len(o["boxes"]) for o in outputs)
    for out in outputs:
        out["boxes"][:] = float("nan")
    with caplog.at_level("WARNING", logger="sqr.evaluation"):
        results = _evaluate(val_name, outputs, str(tmp_path))
    assert results["bbox"]["AP"] == 0.0
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1 and f"dropped {num} prediction(s)" in warnings[0]
    assert _strict_json(tmp_path / "inference" / "coco_instances_results.json") == []


def test_non_finite_predictions_are_dropped_and_counted(
    val_name: str, tmp_path: Path, caplog
) -> None:
    records, _ = load_dataset(val_name)
    outputs = _ground_truth_outputs(records)
    # Next to the perfect predictions: one NaN coordinate, an infinite box, a NaN score and an
    # infinite score, all with the highest score so that they would rank first.
    bad_boxes = torch.tensor(
        [[1.0, 1.0, float("nan"), 5.0], [1.0, 1.0, float("inf"), 5.0], [1, 1, 5, 5], [1, 1, 5, 5]]
    )
    bad_scores = torch.tensor([2.0, 2.0, float("nan"), float("inf")])
    first = outputs[0]
    first["boxes"] = torch.cat([first["boxes"], bad_boxes])
    first["scores"] = torch.cat([first["scores"], bad_scores])
    first["labels"] = torch.cat([first["labels"], torch.zeros(4, dtype=torch.int64)])
    with caplog.at_level("WARNING", logger="sqr.evaluation"):
        results = _evaluate(val_name, outputs, str(tmp_path))
    assert results["bbox"]["AP"] == pytest.approx(100.0, abs=1e-6)
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1
    assert "dropped 4 prediction(s)" in warnings[0] and "1 image(s)" in warnings[0]
    written = _strict_json(tmp_path / "inference" / "coco_instances_results.json")
    assert len(written) == sum(len(r["annotations"]) for r in records)
    assert all(all(map(math.isfinite, p["bbox"] + [p["score"]])) for p in written)


def test_per_category_ap_under_names_with_sparse_ids(tmp_path: Path) -> None:
    # Json ids 3, 7, 9 are the contiguous classes 0, 1, 2 (increasing id order); two categories
    # share the name "car", so their keys carry the json id.
    box = {"area": 400, "iscrowd": 0}
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [8, 8, 20, 20], **box},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [30, 30, 20, 20], **box},
        ],
        "categories": [
            {"id": 7, "name": "car"},
            {"id": 3, "name": "car"},
            {"id": 9, "name": "bus"},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    name = f"test_eval_sparse_ids_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, str(tmp_path / "ann.json"), str(tmp_path))
    # Image 1: its car (id 7, class 1) found exactly. Image 2: its bus labelled as class 0
    # (car, id 3), so the bus is missed and the id-3 detection matches nothing.
    outputs = [
        {"boxes": torch.tensor([[8.0, 8, 28, 28]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 30, 50, 50]]), "labels": torch.tensor([0])},
    ]
    for out in outputs:
        out["scores"] = torch.ones(1)
    bbox = _evaluate(name, outputs)["bbox"]
    assert list(bbox)[6:] == ["AP-car (id 3)", "AP-car (id 7)", "AP-bus"]
    assert bbox["AP-car (id 7)"] == pytest.approx(100.0)  # its one object, found first
    assert bbox["AP-bus"] == 0.0  # an object, never found
    assert math.isnan(bbox["AP-car (id 3)"])  # no ground truth: AP undefined
    assert bbox["AP"] == pytest.approx(50.0)  # mean over the two categories with objects


def _register(tmp_path: Path, data: dict) -> str:
    (tmp_path / "ann.json").write_text(json.dumps(data))
    name = f"test_eval_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, str(tmp_path / "ann.json"), str(tmp_path))
    return name


def _one_box(box: list[float], label: int = 0) -> dict:
    return {"boxes": torch.tensor([box]), "scores": torch.ones(1), "labels": torch.tensor([label])}


def _no_box() -> dict:
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}


def test_duplicate_annotation_ids_are_refused_before_scoring(tmp_path: Path) -> None:
    # COCO.anns is keyed by id, so one of the two boxes vanished from the ground truth and
    # perfect predictions scored AP 50.5 with AP-x = nan.
    box = {"category_id": 1, "bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (1, 2)],
        "annotations": [{"id": 1, "image_id": 1, **box}, {"id": 1, "image_id": 2, **box}],
        "categories": [{"id": 1, "name": "x"}],
    }
    name = _register(tmp_path, data)
    with pytest.raises(ValueError, match="annotation id 1 is used by two annotations"):
        COCOEvaluator(name)


def test_same_answer_with_no_prediction_or_one_useless_one(tmp_path: Path) -> None:
    # Two 20 x 20 ("small") objects of classes 0 (id 3) and 2 (id 9); class 1 (id 7) and the
    # medium and large sizes have none, so their AP is undefined (NaN) whatever is predicted.
    # No predictions at all reported 0.0 for those, one useless detection NaN.
    box = {"bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, **box},
            {"id": 2, "image_id": 2, "category_id": 9, **box},
        ],
        "categories": [{"id": c, "name": f"c{c}"} for c in (3, 7, 9)],
    }
    name = _register(tmp_path, data)
    nan = math.nan
    expected = {
        "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": nan, "APl": nan,
        "AP-c3": 0.0, "AP-c7": nan, "AP-c9": 0.0,
    }  # fmt: skip
    useless = _evaluate(name, [_one_box([40.0, 40, 60, 60], label=1), _no_box()])["bbox"]
    nothing = _evaluate(name, [_no_box(), _no_box()])["bbox"]
    for bbox in (useless, nothing):
        assert list(bbox) == list(expected)
        for key, value in expected.items():
            assert bbox[key] == value or (math.isnan(value) and math.isnan(bbox[key])), key


def test_unmatchable_ground_truth_is_scored_and_named_once(tmp_path: Path, caplog) -> None:
    # Image 1 is 64 x 48. Besides one ordinary box, the ground truth holds four boxes that no
    # prediction inside the image can match: zero width, negative height, wholly right of the
    # image, and a NaN coordinate. A crowd box is an ignore region, never "unmatched".
    def ann(ann_id: int, bbox: list[float], iscrowd: int = 0) -> dict:
        return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": bbox, "iscrowd": iscrowd}

    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
        "annotations": [
            ann(1, [8, 8, 20, 20]),
            ann(2, [8, 8, 0, 20]),
            ann(3, [8, 8, 20, -4]),
            ann(4, [64, 8, 20, 20]),
            ann(5, [8, float("nan"), 20, 20]),
            ann(6, [30, 30, 0, 0], iscrowd=1),
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    name = _register(tmp_path, data)
    with caplog.at_level("WARNING", logger="sqr.evaluation"):
        bbox = _evaluate(name, [_one_box([8.0, 8, 28, 28])])["bbox"]
    # COCO's rule, kept: all five non-crowd boxes are ground truth. The one prediction finds
    # one of them, so precision is 1 up to recall 1/5 and 0 after: the recall points 0, 0.01,
    # ..., 0.20 (21 of COCO's 101) score 1 at every IoU threshold.
    assert bbox["AP"] == pytest.approx(100 * 21 / 101)
    warnings = [r.getMessage() for r in caplog.records if "cannot be matched" in r.getMessage()]
    assert len(warnings) == 1
    message = warnings[0]
    assert str(tmp_path / "ann.json") in message
    assert "4 ground-truth box(es)" in message and "annotation ids [2, 3, 4, 5]" in message
    assert "scored as misses" in message
