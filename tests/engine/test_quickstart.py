"""The README's main job, shortened: each quickstart trains, evaluates and writes metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.train_net import REPO, load_train_net, parse

QUICKSTARTS = REPO / "projects/sqr/configs/quickstart"
DAB_QUICKSTART = QUICKSTARTS / "sqr_dab_detr_synthetic.py"
RTDETR_QUICKSTART = QUICKSTARTS / "sqr_rtdetrv2_synthetic.py"


@pytest.mark.parametrize(
    ("config", "last_stage"),
    [
        # The last of DAB-DETR's 6 stages decodes 13 groups, the first one.
        pytest.param(DAB_QUICKSTART, 5, id="dab_detr"),
        # RT-DETRv2's 3 stages decode 1, 2 and 3 groups.
        pytest.param(RTDETR_QUICKSTART, 2, id="rtdetrv2"),
    ],
)
def test_quickstart_produces_metrics_and_ap(
    datasets_dir, tmp_path: Path, config: Path, last_stage: int
) -> None:
    train_net = load_train_net()
    args = parse(
        "--config-file",
        str(config),
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
    # Per-stage SQR losses are logged, first stage to last.
    assert {"loss_class_s0", f"loss_class_s{last_stage}"} <= set(rows[0])
    assert f"loss_class_s{last_stage + 1}" not in rows[0]

    # The evaluation logged at the end of training is that of the saved weights: --eval-only
    # of model_final.pth gives every COCO metric again, to the bit.
    results = train_net.main(
        parse(
            "--config-file",
            str(config),
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


def test_rtdetrv2_quickstart_feeds_the_model_what_rtdetr_expects(datasets_dir) -> None:
    """RT-DETR trains and evaluates on fixed squares of uint8 pixels that the model scales to
    [0, 1]; evaluation predicts in each image's original size."""
    from sqr.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(RTDETR_QUICKSTART))
    size = cfg.dataloader.train.mapper.augmentation.size
    assert cfg.dataloader.test.mapper.augmentation.size == size
    assert size % 32 == 0  # RTDETRv2 pads to multiples of 32: a multiple needs no padding

    for sample in next(iter(instantiate(cfg.dataloader.train))):
        assert sample["image"].dtype == torch.uint8
        assert sample["image"].shape == (3, size, size)
        assert (sample["height"], sample["width"]) == (size, size)
        boxes = sample["targets"]["boxes"]
        assert len(boxes) and boxes.min() >= 0 and boxes.max() <= size
        assert (boxes[:, 2:] > boxes[:, :2]).all()

    test_sample = next(iter(instantiate(cfg.dataloader.test)))[0]
    assert test_sample["image"].dtype == torch.uint8
    assert test_sample["image"].shape == (3, size, size)
    # The synthetic images are 112..160 px: predictions are rescaled to the original size.
    assert min(test_sample["height"], test_sample["width"]) >= 112

    model = instantiate(cfg.model).eval()
    images, mask = model.preprocess_image([test_sample])
    assert images.shape == (1, 3, size, size) and not mask.any()
    expected = test_sample["image"].float() / 255.0
    torch.testing.assert_close(images[0], expected, rtol=0, atol=1e-6)
