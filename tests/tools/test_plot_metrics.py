"""sqr.tools.plot_metrics: reading metrics.json by hand, and plots of a real training run."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from helpers.train_net import REPO, load_train_net, parse
from PIL import Image

from sqr.tools import plot_metrics

QUICKSTART = str(REPO / "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return plot_metrics


def write_rows(path: Path, rows: list[dict | str]) -> None:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


ROWS = [
    # Training rows: 2 stages, 3 terms each, plus total_loss and lr.
    {"iteration": 0, "total_loss": 21.0, "lr": 1e-4, "loss_class_s0": 1.0, "loss_bbox_s0": 2.0}
    | {"loss_giou_s0": 3.0, "loss_class_s1": 4.0, "loss_bbox_s1": 5.0, "loss_giou_s1": 6.0},
    {"iteration": 1, "total_loss": 10.0, "loss_class_s0": 1.0, "loss_bbox_s0": 1.0}
    | {"loss_giou_s0": 1.0, "loss_class_s1": 2.0, "loss_bbox_s1": 2.0, "loss_giou_s1": 3.0},
    # An evaluation row: other keys, same iteration as the training row before it.
    {"iteration": 1, "bbox/AP": 12.5, "bbox/AP50": 30.0, "bbox/AP75": 10.0}
    | {"bbox/APl": float("nan")},
    # A resumed run writes iteration 1 again; the later value wins.
    {"iteration": 1, "total_loss": 9.0, "loss_class_s0": 0.5, "loss_bbox_s0": 1.0}
    | {"loss_giou_s0": 1.0, "loss_class_s1": 2.0, "loss_bbox_s1": 2.0, "loss_giou_s1": 3.0},
    '{"iteration": 2, "total_lo',  # a line still being written
]


def test_load_metrics_and_stage_losses(tool, tmp_path: Path) -> None:
    write_rows(tmp_path / "metrics.json", ROWS)
    series = tool.load_metrics(str(tmp_path / "metrics.json"))
    assert series["total_loss"] == [(0, 21.0), (1, 9.0)]
    assert series["bbox/AP"] == [(1, 12.5)]
    # Stage 0: 1 + 2 + 3 = 6 at iteration 0; 0.5 + 1 + 1 = 2.5 at 1 (the resumed row).
    # Stage 1: 4 + 5 + 6 = 15; 2 + 2 + 3 = 7.
    assert tool.stage_losses(series) == {0: [(0, 6.0), (1, 2.5)], 1: [(0, 15.0), (1, 7.0)]}
    assert tool.other_losses(series) == ["total_loss"]


def test_stage_losses_need_every_term(tool) -> None:
    # Iteration 5 lacks loss_bbox_s0: only iteration 4 is a complete stage-0 loss (1 + 2).
    series = {"loss_class_s0": [(4, 1.0), (5, 1.0)], "loss_bbox_s0": [(4, 2.0)], "loss_box": []}
    assert tool.stage_losses(series) == {0: [(4, 3.0)]}
    assert tool.other_losses(series) == ["loss_box"]


def test_main_writes_a_png_and_fails_on_a_missing_file(tool, tmp_path: Path, capsys) -> None:
    write_rows(tmp_path / "metrics.json", ROWS)
    assert tool.main([str(tmp_path)]) == 0
    with Image.open(tmp_path / "metrics.png") as image:
        image.verify()
        assert image.format == "PNG"
    assert tool.main([str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_real_runs_per_group(tool, datasets_dir, tmp_path: Path) -> None:
    # Two 2-iteration quickstart trainings (SQR and baseline) with one evaluation each.
    train_net = load_train_net()
    runs = {"sqr": [], "baseline": ["model.recollection.mode=none"]}
    for name, extra in runs.items():
        overrides = [f"train.output_dir={tmp_path / name}", "train.max_iter=2"]
        overrides += ["train.eval_period=2", "train.log_period=1"]
        overrides += ["dataloader.train.total_batch_size=2", *extra]
        train_net.main(parse("--config-file", QUICKSTART, *overrides))
    assert tool.groups_per_stage(str(tmp_path / "sqr")) == (1, 2, 3, 5, 8, 13)
    assert tool.groups_per_stage(str(tmp_path / "baseline")) == (1,) * 6
    series = tool.load_metrics(str(tmp_path / "sqr" / "metrics.json"))
    assert sorted(tool.stage_losses(series)) == list(range(6))
    assert [it for it, _ in series["bbox/AP"]] == [1]

    out = tmp_path / "both.png"
    dirs = [str(tmp_path / name) for name in runs]
    assert tool.main([*dirs, "--per-group", "--output", str(out)]) == 0
    with Image.open(out) as image:
        image.verify()
        assert image.format == "PNG" and image.width > image.height
