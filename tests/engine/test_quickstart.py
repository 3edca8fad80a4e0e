"""The README's main job, shortened: the quickstart trains, evaluates and writes metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers.train_net import REPO, load_train_net, parse

QUICKSTART = REPO / "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py"


def test_quickstart_produces_metrics_and_ap(datasets_dir, tmp_path: Path) -> None:
    train_net = load_train_net()
    args = parse(
        "--config-file",
        str(QUICKSTART),
        f"train.output_dir={tmp_path}",
        "train.max_iter=4",
        "train.eval_period=4",
        "train.log_period=2",
        "dataloader.train.total_batch_size=2",
    )
    train_net.main(args)
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    final = [r for r in rows if "bbox/AP" in r]
    assert len(final) == 1 and final[0]["iteration"] == 3
    # Per-stage SQR losses are logged: the last stage decodes 13 groups, the first one.
    assert {"loss_class_s0", "loss_class_s5"} <= set(rows[0])

    # The evaluation logged at the end of training is that of the saved weights: --eval-only
    # of model_final.pth gives every COCO metric again, to the bit.
    results = train_net.main(
        parse(
            "--config-file",
            str(QUICKSTART),
            "--eval-only",
            f"train.init_checkpoint={tmp_path / 'model_final.pth'}",
            f"train.output_dir={tmp_path / 'eval'}",
        )
    )
    logged = {k.removeprefix("bbox/"): v for k, v in final[0].items() if k.startswith("bbox/")}
    assert {"AP", "AP50", "AP75"} <= logged.keys()
    # metrics.json is strict JSON: a metric without objects of its size (NaN) is logged as null.
    evaluated = {k: None if math.isnan(v) else v for k, v in results["bbox"].items()}
    assert logged == evaluated
