"""Stage-wise analysis of a trained detector: does a later decoder stage undo an earlier one?

    python tools/analyze_stages.py --config-file projects/sqr/configs/X.py \
        train.init_checkpoint=output/X/model_final.pth
    python tools/analyze_stages.py --config-file X.py --num-images 500 --num-gpus 8 \
        train.init_checkpoint=model.pth
    python tools/analyze_stages.py --config-file X.py --num-gpus 2 train.device=cpu \
        train.init_checkpoint=model.pth                 # 2 gloo CPU processes

Runs the config's test set (or its first ``--num-images`` images) through the model in eval mode
and reports, per decoder stage, the COCO AP of that stage's predictions as if it were the final
output; the TP fading rate and FP exacerbation rate at IoU 0.5 and 0.75; and the oracle AP (best
stage per query). The exact definitions are in :mod:`sqr.evaluation.stage_analysis`.

A decoder that evaluates fewer stages than it has (RT-DETRv2's ``model.decoder.eval_idx``) is
analysed at full depth: stage ``s``'s AP is then the AP the detector has with ``eval_idx = s - 1``,
and ``eval_stage`` in the result names the stage the config evaluates. A config that trains a
moving average (``train.ema.enabled``) is analysed with its EMA weights, as it is evaluated.

Writes ``stage_analysis.json`` and ``stage_analysis.png`` (plus ``config.yaml`` and ``log.txt``)
into ``--output-dir``, by default ``{train.output_dir}/stage_analysis``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from tabulate import tabulate
from tqdm import tqdm

from sqr.config import instantiate
from sqr.utils.cli import default_argument_parser
from sqr.utils.file_io import write_json

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

    from sqr.evaluation.stage_analysis import StageAnalyzer

# Everything that imports torch is imported inside the functions, so that --help (parsed before
# any of them runs) answers without loading it.

logger = logging.getLogger("sqr.analyze_stages")

RESULT_FILE = "stage_analysis.json"
FIGURE_FILE = "stage_analysis.png"


def build_parser():
    """The config, launch flags and overrides, plus the analysis options."""
    parser = default_argument_parser(
        epilog=(
            "Examples:\n"
            "  sqr-analyze --config-file cfg.py train.init_checkpoint=model.pth\n"
            "  sqr-analyze --config-file cfg.py --num-images 200 --num-gpus 8 "
            "train.init_checkpoint=model.pth"
        ),
        training=False,
    )
    parser.add_argument(
        "--num-images", type=int, default=None, help="analyse the first N test images only"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where to write (default: {train.output_dir}/stage_analysis)",
    )
    parser.add_argument(
        "--fp-min-score",
        type=float,
        default=0.0,
        help="count a final false positive for the FP exacerbation rate only from this score up",
    )
    return parser


def setup(args, default_subdir: str = "stage_analysis") -> DictConfig:
    """Load the config with overrides, point its output at ``--output-dir`` (by default
    ``{train.output_dir}/{default_subdir}``), and set up logging."""
    from sqr.engine import default_setup, load_config

    if args.num_images is not None and args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    cfg = load_config(args)
    cfg.train.output_dir = args.output_dir or os.path.join(cfg.train.output_dir, default_subdir)
    default_setup(cfg, args)
    if eval_stage(cfg) is not None:
        logger.info(
            "The config evaluates with model.decoder.eval_idx=%s; the analysis decodes every "
            "stage (eval_idx=-1), so that each stage's AP is that of a shallower evaluation",
            cfg.model.decoder.eval_idx,
        )
    return cfg


def eval_stage(cfg: DictConfig) -> int | None:
    """The 1-based decoder stage the config evaluates when it is not the last (its
    ``model.decoder.eval_idx``), else None."""
    num_stages = cfg.model.decoder.num_stages
    stage = cfg.model.decoder.get("eval_idx", -1) % num_stages + 1
    return None if stage == num_stages else stage


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """The config's model at full decoder depth with ``train.init_checkpoint`` loaded (its EMA
    weights where the config trains them), in eval mode."""
    from sqr.engine import load_trained_weights, trained_weights

    model_cfg = cfg.model
    if eval_stage(cfg) is not None:  # every stage, not the evaluated ones only
        model_cfg = copy.deepcopy(model_cfg)
        model_cfg.decoder.eval_idx = -1
    model = instantiate(model_cfg).to(cfg.train.device)
    load_trained_weights(
        model, cfg.train.init_checkpoint, purpose="the analysis", weights=trained_weights(cfg)
    )
    return model.eval()


def load_test_records(cfg: DictConfig, num_images: int | None) -> list[dict]:
    """Records of ``dataloader.test.dataset`` (a name or names), the first ``num_images``."""
    from sqr.data.catalog import load_dataset

    dataset = cfg.dataloader.test.dataset
    names = [dataset] if isinstance(dataset, str) else list(dataset)
    records = [record for name in names for record in load_dataset(name)[0]]
    return records[:num_images] if num_images else records


def ground_truth(record: dict) -> dict[str, torch.Tensor]:
    """Non-crowd boxes (xyxy, original image size) and contiguous labels of one record."""
    import torch

    annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    return {
        "boxes": torch.tensor([a["bbox"] for a in annos], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([a["category_id"] for a in annos], dtype=torch.int64),
    }


def analyze(
    cfg: DictConfig, model: torch.nn.Module, records: list[dict], fp_min_score: float
) -> dict:
    """Run this rank's shard of ``records`` through ``model`` and gather the analysis."""
    from sqr.data import build_detection_test_loader
    from sqr.evaluation.stage_analysis import StageAnalyzer
    from sqr.evaluation.stages import predict_stages, query_predictions, stage_outputs
    from sqr.utils import comm

    test = cfg.dataloader.test
    loader = build_detection_test_loader(
        records,
        instantiate(test.mapper),
        num_workers=test.get("num_workers", 0),
        batch_size=test.get("batch_size", 1),
    )
    if "evaluator" not in cfg.dataloader:
        raise ValueError("the config has no dataloader.evaluator to compute COCO AP with")
    cfg.dataloader.evaluator.output_dir = None  # no results file per stage

    def make_analyzer(num_stages: int) -> StageAnalyzer:
        return StageAnalyzer(
            lambda: instantiate(cfg.dataloader.evaluator),
            num_stages=num_stages,
            fp_min_score=fp_min_score,
        )

    gt_by_id = {record["image_id"]: ground_truth(record) for record in records}
    analyzer = None
    bar = tqdm(
        loader, desc="stages", unit="batch", disable=not comm.is_main_process(), dynamic_ncols=True
    )
    for inputs in bar:
        logits, boxes = predict_stages(model, inputs)
        analyzer = analyzer or make_analyzer(logits.shape[0])
        analyzer.process(
            inputs,
            stage_outputs(model, logits, boxes, inputs),
            query_predictions(logits, boxes, inputs),
            [gt_by_id[x["image_id"]] for x in inputs],
        )
    # Every rank takes part in the gathers, even one whose shard was empty: S comes from the
    # others then.
    num_stages = max(comm.all_gather(analyzer.num_stages if analyzer else 0))
    analyzer = analyzer or make_analyzer(num_stages)
    # S + 2 COCO evaluations would each log their full tables; the summary below replaces them.
    coco_logger = logging.getLogger("sqr.evaluation.coco_evaluation")
    level = coco_logger.level
    coco_logger.setLevel(logging.WARNING)
    try:
        return analyzer.evaluate()
    finally:
        coco_logger.setLevel(level)


def _finite(value: Any) -> Any:
    """NaN (COCO AP of an absent size range) as None, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def log_summary(result: dict) -> None:
    rows = [
        [s + 1] + [ap[k] for k in ("AP", "AP50", "AP75")] for s, ap in enumerate(result["stage_ap"])
    ]
    table = tabulate(rows, headers=["stage", "AP", "AP50", "AP75"], floatfmt=".2f")
    logger.info("COCO AP per decoder stage (%d images):\n%s", result["num_images"], table)
    for threshold, rates in result["rates"].items():
        logger.info(
            "IoU %s: TP fading rate %s%% (%d of %d), FP exacerbation rate %s%% (%d of %d)",
            threshold,
            _percent(rates["tp_fading_rate"]),
            rates["tp_faded"],
            rates["tp"],
            _percent(rates["fp_exacerbation_rate"]),
            rates["fp_exacerbated"],
            rates["fp"],
        )
    oracle = result["oracle"]
    logger.info(
        "Oracle AP (best stage per query) %s vs %s for the final stage's per-query predictions",
        _ap(oracle["oracle_AP"]["AP"]),
        _ap(oracle["final_query_AP"]["AP"]),
    )


def plot(result: dict, path: str) -> None:
    """AP per stage (with the oracle) and both rates per IoU threshold, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(range(1, result["num_stages"] + 1))
    fig, (ax_ap, ax_rates) = plt.subplots(1, 2, figsize=(11, 4))
    for key, marker in (("AP", "o"), ("AP50", "s"), ("AP75", "^")):
        values = [ap[key] if ap[key] is not None else float("nan") for ap in result["stage_ap"]]
        ax_ap.plot(stages, values, marker=marker, label=key)
    for key, style, label in (
        ("oracle_AP", {"color": "k", "ls": "--"}, "oracle AP"),
        ("final_query_AP", {"color": "gray", "ls": ":"}, "final, one label per query"),
    ):
        if result["oracle"][key]["AP"] is not None:  # None: no ground truth at all
            ax_ap.axhline(result["oracle"][key]["AP"], **style, label=label)
    ax_ap.set(xlabel="decoder stage", ylabel="COCO AP (%)", xticks=stages, title="AP per stage")
    ax_ap.legend(fontsize="small")

    thresholds = list(result["rates"])
    width = 0.38
    for i, (key, label) in enumerate(
        (("tp_fading_rate", "TP fading"), ("fp_exacerbation_rate", "FP exacerbation"))
    ):
        values = [result["rates"][t][key] for t in thresholds]
        heights = [100 * v if v is not None else 0.0 for v in values]
        positions = [j + (i - 0.5) * width for j in range(len(thresholds))]
        bars = ax_rates.bar(positions, heights, width, label=label)
        ax_rates.bar_label(bars, labels=[_percent(v) for v in values], fontsize="small")
    ax_rates.set(
        xticks=range(len(thresholds)),
        xticklabels=[f"IoU {t}" for t in thresholds],
        ylabel="rate (%)",
        ylim=(0, 118),  # room for the bar labels and the legend
        title="final stage vs earlier stages",
    )
    ax_rates.legend(fontsize="small", loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args) -> dict:
    from sqr.engine import trained_weights
    from sqr.utils import comm

    cfg = setup(args)
    model = build_model(cfg)
    records = load_test_records(cfg, args.num_images)
    result = analyze(cfg, model, records, args.fp_min_score)
    if not comm.is_main_process():
        return {}
    result = _finite(
        {
            **result,
            "config_file": args.config_file,
            "checkpoint": cfg.train.init_checkpoint,
            "weights": trained_weights(cfg),
            "eval_stage": eval_stage(cfg) or result["num_stages"],
            "overrides": list(args.opts),
            "world_size": comm.get_world_size(),
        }
    )
    log_summary(result)
    out = cfg.train.output_dir
    write_json(os.path.join(out, RESULT_FILE), result, indent=2)
    plot(result, os.path.join(out, FIGURE_FILE))
    logger.info("Wrote %s and %s to %s", RESULT_FILE, FIGURE_FILE, out)
    return result


def invoke_main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from sqr.engine import launch_main

    launch_main(main, args)


if __name__ == "__main__":
    invoke_main()
