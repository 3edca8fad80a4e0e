"""sqr-export on tiny models of every detector of the table (sqr.modeling.table): the graph,
onnx.checker, onnxruntime against eager PyTorch at another image size than the export's and on
padded batches of mixed sizes, the Predictor's and the demo's exported backends, atomic writes,
refused options."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.detectors import build_detector
from PIL import Image

from sqr import export
from sqr.config import LazyConfig
from sqr.engine import Predictor, load_config
from sqr.layers.adamixer_ops import AdaptiveSampling
from sqr.layers.ms_deform_attn import MultiScaleDeformableAttention
from sqr.layers.ms_deform_attn_v2 import DeformableAttentionV2
from sqr.modeling import table
from sqr.tools import demo, export_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "sqr" / "configs"
# Every baseline of the table, and one SQR twin: it exports as its baseline, and activation
# checkpointing is training-only (ignored, with a log line).
TWIN = table.DETECTORS[0]
CASES = [
    pytest.param(entry.baseline_config, list(entry.tiny), id=entry.name)
    for entry in table.DETECTORS
] + [
    pytest.param(
        TWIN.config,
        [*TWIN.tiny, "model.decoder.checkpoint_recollected=True"],
        id=f"SQR {TWIN.name}",
    )
]
DAB_DETR = (TWIN.baseline_config, list(TWIN.tiny))
# RT-DETRv2: its own deformable attention (DeformableAttentionV2) and RT-DETR's square resize.
RTDETRV2 = next(entry for entry in table.DETECTORS if entry.family == "rtdetrv2")
# Layers that sample with F.grid_sample (ONNX GridSample).
SAMPLERS = (MultiScaleDeformableAttention, DeformableAttentionV2, AdaptiveSampling)


def small_test_transform(config: str) -> list[str]:
    """Overrides that shrink the config's test transform: shortest edge 48 (40 x 60 and 60 x 40
    images become 48 x 72 and 72 x 48), or RT-DETR's square resize to 64 x 64."""
    augmentation = LazyConfig.load(str(CONFIGS / config)).dataloader.test.mapper.augmentation
    key = "dataloader.test.mapper.augmentation"
    if "short_size" in augmentation:
        return [f"{key}.short_size=48", f"{key}.max_size=96"]
    if "size" in augmentation:
        return [f"{key}.size=64"]
    raise AssertionError(f"{config}: teach small_test_transform its test transform")


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


def command_line(
    config: str, tiny: list[str], tmp_path: Path, images: list[str], fmt: str = "onnx"
) -> list[str]:
    """sqr-export's arguments for ``config`` at test size, with seeded random weights
    (``build_detector``'s, seed 0), saved as trained weights and as their moving average (the
    weights a recipe with ``train.ema.enabled``, RT-DETRv2's, evaluates)."""
    weights = tmp_path / "model.pth"
    if not weights.exists():
        state = build_detector(CONFIGS / config, tiny).state_dict()
        torch.save({"model": state, "ema": {"module": state, "updates": 1}}, weights)
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
        *small_test_transform(config),
        f"train.init_checkpoint={weights}",
    ]


def run_export(argv: list[str]):
    return export_model.main(export_model.parse_args(argv))


def model_inputs(*sizes: tuple[int, int]) -> list[dict]:
    """Model inputs of random pixels, one per (height, width), as after a test transform."""
    gen = torch.Generator().manual_seed(3)
    return [
        {
            "image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
            "height": 2 * h,
            "width": 3 * w,
        }
        for h, w in sizes
    ]


def check_same_detections(eager: list[dict], exported: list[dict], what: str) -> None:
    names = [f"{what}, image {i}" for i in range(len(eager))]
    parity = export.compare_detections(eager, exported, names)
    assert parity.detections > 0, what


@pytest.mark.parametrize(("config", "tiny"), CASES)
def test_onnx_export_matches_eager_at_any_size_and_in_the_predictor(
    config, tiny, tmp_path, images, caplog
) -> None:
    argv = command_line(config, tiny, tmp_path, images)
    with caplog.at_level(logging.INFO, logger="sqr"):
        path, metadata, parity = run_export(argv)
    assert path == str(tmp_path / "deploy" / "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    # Only standard ONNX operators: no custom or Triton op reached the graph.
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    eager = export.prepare_for_export(build_detector(CONFIGS / config, tiny))
    ops = {node.op_type for node in model.graph.node}
    assert ("GridSample" in ops) == any(isinstance(m, SAMPLERS) for m in eager.modules())
    # Both images alone (one at another size than the export's, except after RT-DETR's square
    # resize), then both as one batch: every detector's image size is a dynamic axis.
    assert metadata.fixed_size is None and export.fixed_size_reason(eager) is None
    assert parity.images == 4 and parity.detections > 0
    assert parity.max_box_diff <= 1e-2 and parity.max_score_diff <= 1e-4
    if "checkpoint_recollected=True" in " ".join(tiny):
        assert "checkpoint_recollected=True is ignored" in caplog.text

    # The graph at sizes it was not exported at, and on padded batches of mixed sizes (each
    # image with its own padding mask), against the eager model with the same weights.
    graph = export.ExportedDetector(path)
    with torch.no_grad():
        for sizes in [[(64, 40)], [(72, 48), (48, 72)], [(40, 64), (64, 64), (56, 40)]]:
            batch = model_inputs(*sizes)
            check_same_detections(eager(batch), graph(batch), f"batch {sizes}")
        if eager.mask_padding_in_eval:  # the mask is used: without it the detections change
            images_, orig_sizes, image_sizes = export.batch_for_graph(
                batch, eager.pixel_mean, eager.pixel_std
            )
            masked = graph.run(images_, orig_sizes, image_sizes)[1]
            unmasked = graph.run(images_, orig_sizes, torch.full_like(image_sizes, 64))[1]
            assert (masked - unmasked).abs().max() > 1e-3

    # The Predictor's onnxruntime backend gives the PyTorch backend's detections, on a batch of
    # both images (mixed sizes but after RT-DETR's square resize).
    cfg = load_config(export_model.parse_args(argv))
    ours = Predictor(cfg, device="cpu", batch_size=2)(images)
    theirs = Predictor(cfg, path, backend="onnxruntime", batch_size=2)(images)
    check_same_detections(ours, theirs, "Predictor")
    for a, b in zip(ours, theirs, strict=True):
        assert sorted(a["class_names"]) == sorted(b["class_names"])


@pytest.mark.parametrize("entry", [table.entry("AdaMixer"), RTDETRV2], ids=lambda e: e.name)
def test_torch_export_program_matches_eager_and_the_predictor(entry, tmp_path, images) -> None:
    argv = command_line(entry.baseline_config, list(entry.tiny), tmp_path, images, "torch-export")
    path, metadata, parity = run_export(argv)
    assert path.endswith("model.pt2") and metadata.exporter == "torch.export"
    # torch.export has the example's size: the first image after the test transform.
    size = (48, 72) if "short_size=48" in " ".join(argv) else (64, 64)
    assert metadata.fixed_size == size
    assert parity.detections > 0
    assert parity.max_box_diff <= 1e-2 and parity.max_score_diff <= 1e-4
    cfg = load_config(export_model.parse_args(argv))
    ours = Predictor(cfg, device="cpu")(images[0])
    theirs = Predictor(cfg, path, backend="torch-export")(images[0])
    check_same_detections([ours], [theirs], "Predictor")


def test_parity_pairs_tied_detections_and_names_a_difference() -> None:
    eager = {
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 9.0, 9.0]]),
        "scores": torch.tensor([0.5, 0.5]),
        "labels": torch.tensor([1, 1]),
    }
    # Tied scores in the other order (top-k may order ties either way): the same detections.
    swapped = {key: value.flip(0) for key, value in eager.items()}
    parity = export.compare_detections([eager], [swapped], ["tied"])
    assert (parity.detections, parity.max_box_diff, parity.max_score_diff) == (2, 0.0, 0.0)
    other_label = {**swapped, "labels": torch.tensor([1, 2])}
    with pytest.raises(export.ParityError, match="label: 1 of 2 eager detections have no"):
        export.compare_detections([eager], [other_label], ["label"])
    moved = {**eager, "boxes": eager["boxes"] + torch.tensor([[0.0, 0.0, 0.0, 0.5], [0, 0, 0, 0]])}
    with pytest.raises(export.ParityError, match=r"box: boxes differ by up to 0\.5 px"):
        export.compare_detections([eager], [moved], ["box"])
    fewer = {key: value[:1] for key, value in eager.items()}
    with pytest.raises(export.ParityError, match="count: eager PyTorch kept 2 detections"):
        export.compare_detections([eager], [fewer], ["count"])


def test_batch_for_graph_pads_as_evaluation_batches() -> None:
    inputs = model_inputs((3, 5), (4, 2))
    mean, std = torch.tensor([10.0, 20.0, 30.0]), torch.tensor([2.0, 4.0, 5.0])
    images, orig_sizes, image_sizes = export.batch_for_graph(inputs, mean, std)
    assert images.shape == (2, 3, 4, 5)
    assert orig_sizes.tolist() == [[6, 15], [8, 6]]  # the inputs' "height", "width"
    assert image_sizes.tolist() == [[3, 5], [4, 2]]
    first = (inputs[0]["image"].float() - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.equal(images[0, :, :3], first) and not images[0, :, 3:].any()
    second = (inputs[1]["image"].float() - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.equal(images[1, :, :, :2], second) and not images[1, :, :, 2:].any()


def test_a_fixed_size_graph_refuses_a_batch_of_another_size(tmp_path, monkeypatch) -> None:
    model = export.prepare_for_export(build_detector(CONFIGS / DAB_DETR[0], DAB_DETR[1]))
    monkeypatch.setattr("sqr.export.exporter.fixed_size_reason", lambda detector: "a reason")
    path = str(tmp_path / "model.onnx")
    metadata = export.export_onnx(model, torch.randn(1, 3, 32, 32), torch.tensor([[32, 32]]), path)
    assert metadata.fixed_size == (32, 32)
    graph = export.ExportedDetector(path)
    assert len(graph(model_inputs((32, 20), (20, 32)))) == 2  # padded to 32 x 32: its size
    with pytest.raises(ValueError, match=r"exported for 32 x 32 batches .* got 32 x 40"):
        graph(model_inputs((32, 40)))


def test_prepare_for_export_puts_every_deformable_attention_on_the_pytorch_path() -> None:
    model = build_detector(CONFIGS / RTDETRV2.baseline_config, RTDETRV2.tiny)
    layers = [m for m in model.modules() if isinstance(m, DeformableAttentionV2)]
    assert layers
    for layer in layers:
        layer.backend = "triton"
    export.prepare_for_export(model)
    assert {layer.backend for layer in layers} == {"pytorch"}


def test_a_second_export_replaces_the_file_whole(tmp_path, monkeypatch) -> None:
    model = export.prepare_for_export(build_detector(CONFIGS / DAB_DETR[0], DAB_DETR[1]))
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
    argv = command_line(*DAB_DETR, tmp_path, images)
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
    model = build_detector(CONFIGS / DAB_DETR[0], DAB_DETR[1]).half()
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
    model = build_detector(CONFIGS / DAB_DETR[0], DAB_DETR[1]).eval()
    logits = torch.zeros(2, 1, model.num_classes)
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5]], [[0.5, 0.5, 0.5, 0.5]]])
    xyxy, _, _, keep = model.postprocess(logits, boxes, torch.tensor([[10, 20], [30, 40]]))
    torch.testing.assert_close(
        xyxy[:, 0], torch.tensor([[5.0, 2.5, 15.0, 7.5], [10, 7.5, 30, 22.5]])
    )
    assert keep.all()
