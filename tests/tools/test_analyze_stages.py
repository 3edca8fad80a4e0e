"""sqr.tools.analyze_stages end to end: a small DAB-DETR on the synthetic shapes val split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

from sqr.config import LazyConfig, instantiate
from sqr.data import build_detection_test_loader
from sqr.evaluation import inference_on_dataset
from sqr.tools import analyze_stages

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py")
SMALL = ["train.device=cpu"]


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return analyze_stages


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """Randomly initialised weights of the quickstart model (20 queries): the analysis needs no
    trained model, and these already find an object or two (AP > 0 on 4 images)."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(QUICKSTART), SMALL)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, path)
    return str(path)


def argv(out: Path, checkpoint: str, *flags: str) -> list[str]:
    return [
        "--config-file",
        QUICKSTART,
        "--output-dir",
        str(out),
        *flags,
        *SMALL,
        f"train.init_checkpoint={checkpoint}",
    ]


def test_writes_json_and_figure(tool, checkpoint, datasets_dir, tmp_path: Path) -> None:
    args = tool.build_parser().parse_args(argv(tmp_path, checkpoint, "--num-images", "4"))
    tool.main(args)

    result = json.loads((tmp_path / "stage_analysis.json").read_text())
    assert result["num_images"] == 4 and result["num_stages"] == 6
    assert len(result["stage_ap"]) == 6
    for ap in result["stage_ap"]:
        assert {"AP", "AP50", "AP75"} <= set(ap) and 0.0 <= ap["AP"] <= 100.0
    assert set(result["rates"]) == {"0.5", "0.75"}
    for rates in result["rates"].values():
        assert 0 <= rates["tp_faded"] <= rates["tp"] and 0 <= rates["fp_exacerbated"] <= rates["fp"]
        # Every query's final prediction is a FP or a TP towards at least one object.
        assert rates["fp"] <= 4 * 20
        if rates["fp"]:
            assert rates["fp_exacerbation_rate"] == rates["fp_exacerbated"] / rates["fp"]
    assert result["oracle"]["iou_threshold"] == 0.5
    assert 0.0 <= result["oracle"]["oracle_AP"]["AP"] <= 100.0
    assert result["checkpoint"] == checkpoint and result["world_size"] == 1

    with Image.open(tmp_path / "stage_analysis.png") as image:
        image.verify()
        assert image.format == "PNG" and image.width > image.height > 100
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "log.txt").is_file()

    # The last stage's AP is the detector's normal evaluation on the same 4 images.
    cfg = tool.setup(args)
    model = tool.build_model(cfg)
    records = tool.load_test_records(cfg, 4)
    loader = build_detection_test_loader(records, instantiate(cfg.dataloader.test.mapper))
    normal = inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))
    assert normal["bbox"]["AP"] > 0  # otherwise the comparison below would say little
    assert result["stage_ap"][-1]["AP"] == pytest.approx(normal["bbox"]["AP"])


def test_needs_weights(tool, datasets_dir, tmp_path: Path) -> None:
    args = tool.build_parser().parse_args(argv(tmp_path, "", "--num-images", "1"))
    with pytest.raises(ValueError, match="train.init_checkpoint"):
        tool.main(args)


@pytest.mark.slow
def test_two_processes_give_the_single_process_result(
    tool, checkpoint, datasets_dir, tmp_path: Path
) -> None:
    # 3 images: rank 0 gets 2, rank 1 gets 1; the gathered result must not depend on the split.
    one, two = tmp_path / "one", tmp_path / "two"
    tool.main(tool.build_parser().parse_args(argv(one, checkpoint, "--num-images", "3")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "tools/analyze_stages.py")]
    command += argv(two, checkpoint, "--num-images", "3", "--num-gpus", "2")
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    single = json.loads((one / "stage_analysis.json").read_text())
    double = json.loads((two / "stage_analysis.json").read_text())
    assert double["world_size"] == 2 and double["num_images"] == single["num_images"] == 3
    assert double["rates"] == single["rates"]
    for a, b in zip(double["stage_ap"], single["stage_ap"], strict=True):
        assert a == pytest.approx(b)
    for key in ("oracle_AP", "final_query_AP"):
        assert double["oracle"][key] == pytest.approx(single["oracle"][key])


def test_a_shallow_evaluation_is_analysed_at_full_depth_with_its_ema(
    tool, datasets_dir, tmp_path: Path
) -> None:
    # RT-DETRv2 evaluating its first stage only (eval_idx=0), trained with a moving average:
    # the analysis decodes all 3 stages from the EMA weights and names the evaluated stage.
    config = str(REPO / "projects/sqr/configs/quickstart/sqr_rtdetrv2_synthetic.py")
    overrides = [*SMALL, "model.decoder.eval_idx=0", "train.ema.enabled=True"]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config), overrides)
    torch.manual_seed(0)
    trained = instantiate(cfg.model).state_dict()
    averaged = {k: v.clone() for k, v in trained.items()}
    averaged["class_embed.1.bias"] += 1.0  # tells the two apart
    path = tmp_path / "model.pth"
    torch.save({"model": trained, "ema": {"module": averaged, "updates": 3}}, path)
    out = tmp_path / "analysis"
    args = tool.build_parser().parse_args(
        ["--config-file", config, "--output-dir", str(out), "--num-images", "2", *overrides]
        + [f"train.init_checkpoint={path}"]
    )
    result = tool.main(args)
    assert result["num_stages"] == 3 and len(result["stage_ap"]) == 3
    assert result["eval_stage"] == 1 and result["weights"] == "ema"
    model = tool.build_model(tool.setup(args))
    assert model.decoder.num_eval_stages == 3
    assert torch.equal(model.state_dict()["class_embed.1.bias"], averaged["class_embed.1.bias"])
