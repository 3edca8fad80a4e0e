"""sqr-export on tiny models of every detector: the graph, onnx.checker, onnxruntime against eager
PyTorch, the Predictor's and the demo's onnxruntime backend, atomic writes, refused options."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.detectors import build_detector
from helpers.tiny import TINY_ADAMIXER, TINY_DAB_DETR, TINY_DEFORMABLE_DETR, TINY_DINO
from PIL import Image

from sqr import export
from sqr.engine import Predictor
from sqr.tools import demo, export_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "sqr" / "configs"
# The recipes' test transform (short side 800) shrunk: 40 x 60 and 60 x 40 images become
# 48 x 72 and 72 x 48 (short side 48), the second a different size for the dynamic axes.
SMALL = [
    "dataloader.test.mapper.augmentation.short_size=48",
    "dataloader.test.mapper.augmentation.max_size=96",
]
# (config, tiny overrides, whether tracing fixes the image size: deformable attention and
# AdaMixer's sampling build constants from the level sizes).
DETECTORS = {
    "dab_detr": ("dab_detr_r50_50ep.py", TINY_DAB_DETR, False),
    "deformable": ("deformable_detr_r50_50ep.py", TINY_DEFORMABLE_DETR, True),
    "deformable_refine": ("deformable_detr_refine_r50_50ep.py", TINY_DEFORMABLE_DETR, True),
    "deformable_two_stage": ("deformable_detr_two_stage_r50_50ep.py", TINY_DEFORMABLE_DETR, True),
    "adamixer": ("adamixer_r50_1x.py", TINY_ADAMIXER, True),
    "dino": ("dino_r50_4scale_12ep.py", TINY_DINO, True),
    # An SQR twin exports as its baseline; activation checkpointing is training-only.
    "sqr_dab_detr": (
        "sqr_dab_detr_r50_50ep.py",
        [*TINY_DAB_DETR, "model.decoder.checkpoint_recollected=True"],
        False,
    ),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two random RGB images of different aspect ratios."""
    folder = tmp_path_factory.mktemp("export_images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(40, 60), (60, 40)]):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def command_line(name: str, tmp_path: Path, images: list[str], fmt: str = "onnx") -> list[str]:
    """sqr-export's arguments for detector ``name``, with freshly initialised weights."""
    config, tiny, _ = DETECTORS[name]
    weights = tmp_path / "model.pth"
    if not weights.exists():
        model = build_detector(CONFIGS / config, tiny)
        torch.save({"model": model.state_dict()}, weights)
    return [
        "--config-file",
        str(CONFIGS / config),
        "--format",
        fmt,
        "--output",
        str(tmp_path / "deploy"),
        "--sample-images",
        *images,
        *tiny,
        *SMALL,
        f"train.init_checkpoint={weights}",
    ]


def run_export(argv: list[str]):
    return export_model.main(export_model.parse_args(argv))


@pytest.mark.parametrize("name", list(DETECTORS))
def test_onnx_export_matches_eager_and_the_predictor(name, tmp_path, images, caplog) -> None:
    argv = command_line(name, tmp_path, images)
    with caplog.at_level(logging.INFO, logger="sqr"):
        path, metadata, parity = run_export(argv)
    assert path == str(tmp_path / "deploy" / "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    # Only standard ONNX operators: no custom or Triton op reached the graph.
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    if "dab_detr" not in name:  # deformable attention and AdaMixer sample with grid_sample
        assert "GridSample" in {node.op_type for node in model.graph.node}
    fixed = DETECTORS[name][2]
    if fixed:  # the first image after the test transform: 40 x 60 -> 48 x 72
        assert metadata.fixed_size == (48, 72)
        assert parity.images == 3  # the 48 x 72 image, then it twice as one batch
    else:
        assert metadata.fixed_size is None
        assert parity.images == 4  # both images, then the first twice as one batch
    assert parity.detections > 0
    assert parity.max_box_diff <= 1e-2 and parity.max_score_diff <= 1e-4
    if name == "sqr_dab_detr":
        assert "checkpoint_recollected=True is ignored" in caplog.text

    # The Predictor's onnxruntime backend gives the PyTorch backend's detections.
    args = export_model.parse_args(argv)
    from sqr.engine import load_config

    cfg = load_config(args)
    eager = Predictor(cfg, device="cpu")(images[:1])
    exported = Predictor(cfg, path, backend="onnxruntime")(images[:1])
    for a, b in zip(eager, exported, strict=True):
        assert a["labels"].tolist() == b["labels"].tolist() and len(a["labels"]) > 0
        assert a["class_names"] == b["class_names"]
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-2, rtol=0)
        torch.testing.assert_close(b["scores"], a["scores"], atol=1e-4, rtol=0)


def test_torch_export_program_matches_eager(tmp_path, images) -> None:
    path, metadata, parity = run_export(command_line("adamixer", tmp_path, images, "torch-export"))
    assert path.endswith("model.pt2") and metadata.exporter == "torch.export"
    assert metadata.fixed_size == (48, 72)  # the first image after the test transform
    assert parity.detections > 0
    assert parity.max_box_diff <= 1e-2 and parity.max_score_diff <= 1e-4


def test_a_second_export_replaces_the_file_whole(tmp_path, monkeypatch) -> None:
    config, tiny, _ = DETECTORS["dab_detr"]
    model = export.prepare_for_export(build_detector(CONFIGS / config, tiny))
    images, sizes = torch.randn(1, 3, 32, 32), torch.tensor([[32, 32]])
    path = str(tmp_path / "model.onnx")
    export.export_onnx(model, images, sizes, path)
    first = Path(path).read_bytes()

    # An export that fails while writing leaves the first file as it was, and no temporary.
    def fail(self):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(onnx.ModelProto, "SerializeToString", fail)
        with pytest.raises(OSError, match="disk full"):
            export.export_onnx(model, images, sizes, path)
    assert Path(path).read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    # A second export that succeeds replaces it with a whole, valid file.
    export.export_onnx(model, 2 * images, sizes, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    onnx.checker.check_model(onnx.load(path), full_check=True)


def test_demo_with_onnx_draws_the_pytorch_detections(tmp_path, images) -> None:
    argv = command_line("dab_detr", tmp_path, images)
    path, _, _ = run_export(argv)
    overrides = argv[argv.index("--sample-images") + 1 + len(images) :]
    common = ["--config-file", argv[1], "--input", *images, "--confidence-threshold", "0"]
    demo.main(demo.parse_args([*common, "--output", str(tmp_path / "torch"), *overrides]))
    demo.main(
        demo.parse_args([*common, "--output", str(tmp_path / "ort"), "--onnx", path, *overrides])
    )
    torch_results = json.loads((tmp_path / "torch" / "results.json").read_text())
    ort_results = json.loads((tmp_path / "ort" / "results.json").read_text())
    assert len(torch_results) == len(ort_results) > 0
    for a, b in zip(torch_results, ort_results, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(b["bbox"], a["bbox"], atol=2e-2)  # x, y, w = x2 - x1: 2x
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)


def test_a_half_precision_model_is_refused_by_name() -> None:
    config, tiny, _ = DETECTORS["dab_detr"]
    model = build_detector(CONFIGS / config, tiny).half()
    with pytest.raises(export.UnexportableOptionError, match=r"parameter \S+ is torch.float16"):
        export.prepare_for_export(model)


def test_predictor_refuses_a_checkpoint_for_the_onnx_backend(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"needs weights=<the exported \.onnx file>"):
        Predictor(str(CONFIGS / "dab_detr_r50_50ep.py"), "model.pth", backend="onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of pytorch, onnxruntime"):
        Predictor(str(CONFIGS / "dab_detr_r50_50ep.py"), backend="tensorrt")


def test_postprocess_boxes_in_each_images_own_size() -> None:
    # Two images, one query, one class: a box covering the middle half of each image.
    # Image 0 is 10 x 20 (H x W): x 5..15, y 2.5..7.5. Image 1 is 30 x 40: x 10..30, y 7.5..22.5.
    config, tiny, _ = DETECTORS["dab_detr"]
    model = build_detector(CONFIGS / config, tiny).eval()
    logits = torch.zeros(2, 1, model.num_classes)
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5]], [[0.5, 0.5, 0.5, 0.5]]])
    xyxy, _, _, keep = model.postprocess(logits, boxes, torch.tensor([[10, 20], [30, 40]]))
    torch.testing.assert_close(
        xyxy[:, 0], torch.tensor([[5.0, 2.5, 15.0, 7.5], [10, 7.5, 30, 22.5]])
    )
    assert keep.all()
