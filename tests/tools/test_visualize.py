"""sqr.tools.visualize: the per-stage panels by hand, and the grid PNG end to end."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

from sqr.config import LazyConfig, instantiate
from sqr.tools import visualize

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return visualize


def test_stage_panels_keep_the_top_queries_and_mark_true_positives(tool) -> None:
    # 2 stages, 3 queries, one class-0 object [0, 0, 10, 10].
    # Stage 1: q0 on the object (0.9), q1 far (0.5), q2 far (0.2).
    # Stage 2: q0 drifts to a far box (0.3), q1 rises (0.8), q2 lands on the object (0.6).
    on, far = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]
    prediction = {
        "boxes": torch.tensor([[on, far, far], [far, far, on]]),
        "scores": torch.tensor([[0.9, 0.5, 0.2], [0.3, 0.8, 0.6]]),
        "labels": torch.tensor([[0, 1, 1], [0, 1, 0]]),
    }
    gt = {"boxes": torch.tensor([on]), "labels": torch.tensor([0])}
    panels = tool.stage_panels(prediction, gt, top_k=2, min_score=0.0)
    # Top 2 per stage by score: stage 1 q0, q1; stage 2 q1, q2. A TP is on the object, class 0.
    assert [[(p["query"], p["tp"]) for p in panel] for panel in panels] == [
        [(0, True), (1, False)],
        [(1, False), (2, True)],
    ]
    assert panels[1][1]["box"] == on and panels[1][1]["score"] == pytest.approx(0.6)
    # min_score 0.7 leaves q0 at stage 1 (0.9) and q1 at stage 2 (0.8).
    high = tool.stage_panels(prediction, gt, top_k=3, min_score=0.7)
    assert [[p["query"] for p in panel] for panel in high] == [[0], [1]]


def test_select_records(tool) -> None:
    records = [{"image_id": i} for i in (1, 2, 3)]
    assert tool.select_records(records, None, 2) == records[:2]
    assert tool.select_records(records, [3, 1], 2) == [records[2], records[0]]
    with pytest.raises(ValueError, match=r"\[7\]"):
        tool.select_records(records, [1, 7], 2)


def test_draws_a_grid_for_chosen_images(
    tool, datasets_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = LazyConfig.load(QUICKSTART)
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, weights)
    argv = ["--config-file", QUICKSTART, "--image-ids", "2,1", "--output-dir", str(tmp_path)]
    args = tool.build_parser().parse_args(
        [*argv, "--top-k", "3", "train.device=cpu", f"train.init_checkpoint={weights}"]
    )
    assert args.image_ids == [2, 1]
    drawn = []
    draw_grid = tool.draw_grid
    monkeypatch.setattr(
        tool, "draw_grid", lambda rows, *a: (drawn.extend(rows), draw_grid(rows, *a))
    )
    path = Path(tool.main(args))
    assert path == tmp_path / "stage_grid.png"
    # The chosen images in the chosen order, each with 6 stage panels of the top 3 queries.
    assert [row["image_id"] for row in drawn] == [2, 1]
    for row in drawn:
        assert [len(panel) for panel in row["panels"]] == [3] * 6
        for panel in row["panels"]:
            assert [p["score"] for p in panel] == sorted((p["score"] for p in panel), reverse=True)
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        # 2 rows of 7 panels (ground truth + 6 stages) of 2.6 x 2.8 inches, at 100 dpi.
        assert image.size == (7 * 260, 2 * 280)
