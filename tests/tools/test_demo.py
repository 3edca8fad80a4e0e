"""sqr.tools.demo (tools/demo.py): inputs, file names, drawings and results.json."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.train_net import STANDIN_CONFIG, load_train_net, run_standin
from PIL import Image

from sqr.data.mapper import ImageReadError
from sqr.data.synthetic import DIRNAME
from sqr.tools import demo
from sqr.utils.visualizer import class_colour

# The fake predictor's detections, in every image's pixels: one kept at the default threshold
# 0.5, one below it. The synthetic images are 112..160 pixels a side.
KEPT_BOX, KEPT_LABEL, KEPT_SCORE = [10.0, 30.0, 40.0, 60.0], 1, 0.875
LOW_BOX = [90.0, 90.0, 105.0, 105.0]


class FakePredictor:
    """Stands in for sqr.engine.Predictor: fixed detections; appends the size of every batch it
    gets to ``FakePredictor.batches`` (set by the ``fake_predictor`` fixture)."""

    batches: list[int]

    def __init__(self, cfg, *, device: str | None, batch_size: int) -> None:
        self.device = torch.device("cpu")

    def __call__(self, arrays: list[np.ndarray]) -> list[dict]:
        assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in arrays)
        FakePredictor.batches.append(len(arrays))
        prediction = {
            "boxes": torch.tensor([KEPT_BOX, LOW_BOX]),
            "scores": torch.tensor([KEPT_SCORE, 0.25]),
            "labels": torch.tensor([KEPT_LABEL, 3]),
            "class_names": ["square", "cross"],
        }
        return [prediction for _ in arrays]


@pytest.fixture
def fake_predictor(monkeypatch) -> list[int]:
    """The demo runs FakePredictor; returns the batch sizes it is called with."""
    monkeypatch.setattr(FakePredictor, "batches", [], raising=False)
    monkeypatch.setattr("sqr.engine.Predictor", FakePredictor)  # the demo imports it in main
    return FakePredictor.batches


@pytest.fixture
def inputs(synthetic_root: Path, tmp_path: Path) -> list[Path]:
    """a/000000.png, a/000001.png and b/000000.png: two inputs share a file name."""
    paths = []
    for folder, index in (("a", 0), ("a", 1), ("b", 2)):
        source = synthetic_root / "val" / f"{index:06d}.png"
        target = tmp_path / folder / f"{index % 2:06d}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(source, target)
        paths.append(target)
    return paths


def run(*argv: str) -> float:
    return demo.main(demo.parse_args(["--config-file", STANDIN_CONFIG, *argv]))


def strict_json(text: str):
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_draws_the_kept_detections_and_writes_coco_results(
    inputs: list[Path], tmp_path: Path, fake_predictor: list[int]
) -> None:
    out = tmp_path / "out"
    # a/ as a directory, then b/ as a glob; a/000001.png again through a glob is drawn once.
    run(
        "--input",
        str(tmp_path / "a"),
        str(tmp_path / "b" / "*.png"),
        str(inputs[1]),
        "--output",
        str(out),
        "--batch-size",
        "2",
    )
    assert fake_predictor == [2, 1]
    names = ["000000.png", "000001.png", "000000_1.png"]  # b/000000.png is renamed
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "results.json"])
    x0, y0, x1, y1 = (int(v) for v in KEPT_BOX)
    # The outline is 1 pixel wide on these small images; the name tag sits on the top edge.
    left, right, bottom = (
        (slice(y0 + 1, y1 + 1), x0),
        (slice(y0 + 1, y1 + 1), x1),
        (y1, slice(x0, x1)),
    )
    interior = (slice(y0 + 1, y1), slice(x0 + 1, x1))
    far = (slice(85, 110), slice(85, 110))  # around the detection below the threshold
    for source, name in zip(inputs, names, strict=True):
        with Image.open(source) as image:
            before = np.asarray(image.convert("RGB"))
        with Image.open(out / name) as image:
            after = np.asarray(image)
        assert after.shape == before.shape
        for edge in (left, right, bottom):
            assert (after[edge] == class_colour(KEPT_LABEL)).all()
            # Changed wherever the input was not already that colour.
            assert (after[edge] != before[edge]).any(-1).mean() > 0.5
        assert np.array_equal(after[interior], before[interior])
        assert np.array_equal(after[far], before[far])

    results = strict_json((out / "results.json").read_text())
    assert [(r["file_name"], r["image_id"]) for r in results] == [
        (str(p), i) for i, p in enumerate(inputs)
    ]
    for r in results:
        assert r["category_id"] == KEPT_LABEL and r["category_name"] == "square"
        assert r["bbox"] == [10.0, 30.0, 30.0, 30.0]  # xywh of KEPT_BOX
        assert r["score"] == KEPT_SCORE


def test_threshold_zero_keeps_every_detection(
    inputs: list[Path], tmp_path: Path, fake_predictor: list[int]
) -> None:
    run("--input", str(inputs[0]), "--output", str(tmp_path / "out"), "--confidence-threshold", "0")
    results = strict_json((tmp_path / "out" / "results.json").read_text())
    assert [r["category_name"] for r in results] == ["square", "cross"]


def test_inputs_that_yield_no_image_are_named(tmp_path: Path, fake_predictor) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    for item in ("missing.png", str(tmp_path / "*.jpg"), str(tmp_path / "empty")):
        with pytest.raises(FileNotFoundError, match=re.escape(f"--input '{item}': no image file")):
            run("--input", item, "--output", str(tmp_path / "out"))


def test_an_unreadable_image_is_named(tmp_path: Path, fake_predictor) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        run("--input", str(broken), "--output", str(tmp_path / "out"))


@pytest.mark.parametrize("batch_size", ["1", "2"])
def test_a_bad_image_stops_the_run_but_keeps_the_results_before_it(
    inputs: list[Path], tmp_path: Path, fake_predictor, batch_size: str
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match=r"broken.png.*--skip-bad-images"):
        run("--input", str(inputs[0]), str(broken), str(inputs[2]), "--output", str(out),
            "--batch-size", batch_size)  # fmt: skip
    results = strict_json((out / "results.json").read_text())
    assert [(r["file_name"], r["image_id"]) for r in results] == [(str(inputs[0]), 0)]
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "results.json"]


def test_skip_bad_images_draws_the_others_and_names_the_skipped(
    inputs: list[Path], tmp_path: Path, fake_predictor, caplog
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="sqr.demo"):
        run("--input", str(inputs[0]), str(broken), str(inputs[2]), "--output", str(out),
            "--batch-size", "2", "--skip-bad-images")  # fmt: skip
    results = strict_json((out / "results.json").read_text())
    assert [(r["file_name"], r["image_id"]) for r in results] == [
        (str(inputs[0]), 0),
        (str(inputs[2]), 2),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000000_1.png", "results.json"]
    assert fake_predictor == [1, 1]  # the bad image leaves its batch one short
    assert f"Skipped 1 unreadable image(s): {broken}" in caplog.text


def test_refuses_to_overwrite_an_input(inputs: list[Path], fake_predictor) -> None:
    with pytest.raises(ValueError, match="would overwrite the input"):
        run("--input", str(inputs[0]), "--output", str(inputs[0].parent))
    with pytest.raises(ValueError, match=r"--confidence-threshold must be in \[0, 1\], got 1.5"):
        run("--input", str(inputs[0]), "--output", "x", "--confidence-threshold", "1.5")


def test_output_names_are_unique_and_deterministic() -> None:
    names = ["a/x.png", "b/X.png", "c/x_1.png", "d/x.png", "e/results.json", "f/scan", "g/s.psd"]
    # X.png clashes case-insensitively; c's x_1.png then takes x_1_1.png. Pillow writes neither
    # JSON, nor files without an extension, nor Photoshop files: those become PNG.
    assert demo.output_names([Path(n) for n in names]) == [
        "x.png",
        "X_1.png",
        "x_1_1.png",
        "x_2.png",
        "results.json.png",
        "scan.png",
        "s.psd.png",
    ]


def test_overrides_after_the_inputs_are_overrides(inputs: list[Path], capsys) -> None:
    args = demo.parse_args(
        [
            "--config-file",
            "c.py",
            "--input",
            str(inputs[0]),
            "a/",
            "train.init_checkpoint=m.pth",
            "train.device=cpu",
            "--output",
            "out",
            "model.num_classes=3",
        ]
    )
    assert args.input == [str(inputs[0]), "a/"]
    assert args.opts == ["train.init_checkpoint=m.pth", "train.device=cpu", "model.num_classes=3"]
    with pytest.raises(SystemExit):
        demo.parse_args(["--config-file", "c.py", "--output", "o", "k=v", "--input", "a.png"])
    assert "came after the config overrides" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_with_a_trained_checkpoint(
    datasets_dir, inputs: list[Path], tmp_path: Path
) -> None:
    run_standin(load_train_net(), tmp_path / "train", "train.max_iter=1")
    out = tmp_path / "out"
    demo.invoke_main(
        [
            "--config-file",
            STANDIN_CONFIG,
            "--input",
            *map(str, inputs),
            "--output",
            str(out),
            "--confidence-threshold",
            "0",
            "--batch-size",
            "2",
            f"train.init_checkpoint={tmp_path / 'train' / 'model_final.pth'}",
        ]
    )
    for name in ("000000.png", "000001.png", "000000_1.png"):
        with Image.open(out / name) as image:
            image.verify()
    results = strict_json((out / "results.json").read_text())
    # No threshold: the stand-in's 4 queries in each of the 3 images.
    assert sorted({r["image_id"] for r in results}) == [0, 1, 2] and len(results) == 12
    assert {r["category_name"] for r in results} <= {"circle", "square", "triangle", "cross"}


def test_readme_quickstart_demo_command_parses_with_a_low_threshold() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    (command,) = [
        block
        for block in re.findall(r"```bash\n(.*?)```", quickstart, re.S)
        if "tools/demo.py" in block
    ]
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:2] == ["python", "tools/demo.py"]
    args = demo.parse_args(words[2:])
    # The quickstart model's scores mostly stay below the default 0.5.
    assert args.confidence_threshold == 0.3
    assert args.input == [f"datasets/{DIRNAME}/val"]
    checkpoint = "output/quickstart/sqr_dab_detr_synthetic/model_final.pth"
    assert args.opts == [f"train.init_checkpoint={checkpoint}"]
