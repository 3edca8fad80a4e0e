"""Inference latency (sqr.export.benchmark, ``tools/benchmark.py --inference``): the recipes'
evaluation sizes, both runtimes on tiny models through the real command line, and the rows that
say why onnxruntime did not run.

No timing thresholds: only that the figures exist and where they come from.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.detectors import build_detector
from helpers.tiny import TINY_DAB_DETR

from sqr.config import LazyConfig
from sqr.export import benchmark as inference
from sqr.modeling.table import TINY_RTDETRV2
from sqr.tools import benchmark

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "sqr" / "configs"
DAB_DETR = str(CONFIGS / "dab_detr_r50_50ep.py")
RTDETRV2 = str(CONFIGS / "rtdetrv2_r18vd_120e.py")
FAST = ["--iters", "1", "--warmup", "0", "--threads", "1"]


@pytest.mark.parametrize(
    ("config", "divisibility", "size"),
    [
        # Shortest edge 800, longest at most 1333: the largest image the transform makes.
        ("dab_detr_r50_50ep.py", 1, (800, 1333)),
        ("dino_r50_4scale_12ep.py", 1, (800, 1333)),
        # AdaMixer pads its batch to multiples of 32.
        ("adamixer_r50_1x.py", 32, (800, 1344)),
        # RT-DETR's square resize.
        ("rtdetrv2_r18vd_120e.py", 32, (640, 640)),
    ],
)
def test_eval_size_is_the_recipes_test_transform(config, divisibility, size) -> None:
    cfg = LazyConfig.load(str(CONFIGS / config))
    assert inference.eval_size(cfg, divisibility) == size


def test_eval_size_follows_overrides_and_names_an_unknown_transform() -> None:
    cfg = LazyConfig.load(RTDETRV2)
    LazyConfig.apply_overrides(cfg, ["dataloader.test.mapper.augmentation.size=96"])
    assert inference.eval_size(cfg, 32) == (96, 96)
    del cfg.dataloader.test.mapper.augmentation.size
    with pytest.raises(
        inference.EvalSizeError, match=r"dataloader\.test\.mapper\.augmentation .*--height"
    ):
        inference.eval_size(cfg)


def test_inference_benchmark_times_both_runtimes() -> None:
    model = build_detector(CONFIGS / "dab_detr_r50_50ep.py", TINY_DAB_DETR)
    rows = inference.inference_latency(model, 32, 32, (1, 2), iters=1, warmup=0, threads=1)
    assert [row["batch"] for row in rows] == [1, 2]
    assert all(row["eager_ms"] > 0 and row["onnxruntime_ms"] > 0 for row in rows)
    assert [row["note"] for row in rows] == ["", ""]


@pytest.mark.parametrize(
    ("config", "tiny", "test_size", "size"),
    [
        (
            DAB_DETR,
            TINY_DAB_DETR,
            [
                "dataloader.test.mapper.augmentation.short_size=48",
                "dataloader.test.mapper.augmentation.max_size=64",
            ],
            (48, 64),
        ),
        # RT-DETRv2 with its ONNX export: the real-time rows of the README.
        (RTDETRV2, list(TINY_RTDETRV2), ["dataloader.test.mapper.augmentation.size=64"], (64, 64)),
    ],
    ids=["dab_detr", "rtdetrv2"],
)
def test_command_line_prints_and_writes_the_rows(
    config, tiny, test_size, size, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "latency.json"
    argv = ["--inference", "--config-file", config, "--batch-sizes", "1", "2", *FAST]
    assert benchmark.main([*argv, "--json", str(out), *tiny, *test_size]) == 0
    data = json.loads(out.read_text())
    settings = data["settings"]
    assert (settings["height"], settings["width"]) == size  # the (shrunk) test transform's
    assert "eval size" in settings["size_source"]
    assert settings["batch_sizes"] == [1, 2] and settings["threads"] == 1
    assert len(settings["load_average_before"]) == 3
    assert [row["batch"] for row in data["rows"]] == [1, 2]
    for row in data["rows"]:
        assert row["eager_ms"] > 0 and row["onnxruntime_ms"] > 0 and row["note"] == ""
    printed = capsys.readouterr().out
    assert f"{size[0]} x {size[1]} (the recipe's eval size" in printed
    assert "| batch | eager PyTorch | onnxruntime | note |" in printed
    for row in data["rows"]:
        line = f"| {row['batch']} | {row['eager_ms']:.1f} | {row['onnxruntime_ms']:.1f} | - |"
        assert line in printed


def test_explicit_size_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    argv = ["--inference", "--config-file", DAB_DETR, "--height", "40", "--width", "56", *FAST]
    assert benchmark.main([*argv, "--json", str(out), *TINY_DAB_DETR]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["height"], settings["width"], settings["size_source"]) == (
        40,
        56,
        "--height/--width",
    )
    assert settings["batch_sizes"] == [1, 4]  # the default


def test_a_failed_export_leaves_eager_rows_that_say_why(monkeypatch, caplog) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo\nmore detail")

    monkeypatch.setattr(inference, "export_onnx", refuse)
    model = build_detector(CONFIGS / "dab_detr_r50_50ep.py", TINY_DAB_DETR)
    rows = inference.inference_latency(model, 32, 32, (1, 2), iters=1, warmup=0, threads=1)
    note = f"{inference.EXPORT_FAILED}: DABDETR at 32 x 32: RuntimeError: Unsupported: ONNX "
    note += "export of operator foo"
    for row in rows:
        assert row["eager_ms"] > 0 and row["onnxruntime_ms"] is None
        assert row["note"] == note  # the first line; the full message goes to the log
    assert "more detail" in caplog.text
    table = inference.format_rows(rows)
    assert f"| 1 | {rows[0]['eager_ms']:.1f} | - | {note} |" in table


def test_without_onnxruntime_the_rows_say_how_to_install_it(monkeypatch) -> None:
    def missing():
        raise ImportError("running an ONNX model needs onnxruntime; pip install 'sqr[deploy]'")

    monkeypatch.setattr(inference, "import_onnxruntime", missing)
    model = build_detector(CONFIGS / "dab_detr_r50_50ep.py", TINY_DAB_DETR)
    (row,) = inference.inference_latency(model, 32, 32, (1,), iters=1, warmup=0)
    assert row["eager_ms"] > 0 and row["onnxruntime_ms"] is None
    assert row["note"].startswith("onnxruntime not run:") and "sqr[deploy]" in row["note"]


def test_eager_latency_times_each_batch_after_the_warmup(monkeypatch) -> None:
    # Two batch sizes x (1 warm-up + 3 timed) forwards, the warm-up untimed: the figures are
    # the median timed call per image.
    calls = []
    clock = iter(range(100))
    monkeypatch.setattr(inference, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(
        inference.DeployableDetector, "forward", lambda self, images, sizes: calls.append(images)
    )
    model = build_detector(CONFIGS / "dab_detr_r50_50ep.py", TINY_DAB_DETR)
    figures = inference.eager_latency(model, 32, 48, (1, 4), iters=3, warmup=1)
    assert [tuple(x.shape) for x in calls] == [(1, 3, 32, 48)] * 4 + [(4, 3, 32, 48)] * 4
    assert figures == [1e3, 1e3 / 4]  # each call one clock tick: 1 s per batch


def test_on_cuda_onnxruntime_is_not_run_and_the_rows_say_so(monkeypatch) -> None:
    asked = {}

    def eager(detector, height, width, batch_sizes, **kwargs):
        asked.update(kwargs)
        return [5.0] * len(batch_sizes)

    monkeypatch.setattr(inference, "eager_latency", eager)
    monkeypatch.setattr(inference, "onnxruntime_latency", lambda *a, **k: pytest.fail("ran"))
    rows = inference.inference_latency(None, 640, 640, (1, 8), iters=1, warmup=0, device="cuda")
    assert asked == {"iters": 1, "warmup": 0, "device": "cuda"}
    assert [(r["batch"], r["eager_ms"], r["onnxruntime_ms"]) for r in rows] == [
        (1, 5.0, None),
        (8, 5.0, None),
    ]
    assert rows[0]["note"] == "onnxruntime not run: this benchmark runs it on CPU only"
