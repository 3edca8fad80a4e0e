"""Draw the ground truth and every decoder stage's top predictions for chosen test images.

    python tools/visualize.py --config-file projects/sqr/configs/X.py --image-ids 3,17 \
        train.init_checkpoint=output/X/model_final.pth
    python tools/visualize.py --config-file X.py --num-images 4 --top-k 8 \
        train.init_checkpoint=model.pth

Writes ``stage_grid.png`` into ``--output-dir`` (default ``{train.output_dir}/visualize``): one
row per image, the ground truth in the first column, then one column per decoder stage with that
stage's ``--top-k`` queries by score (per-query predictions: top class and its sigmoid score, see
:mod:`sqr.evaluation.stages`). A query keeps its colour in every stage and is labelled
``q<index> <class> <score>``, so a prediction that fades, or a false positive that grows, can be
followed from left to right. Solid boxes are true positives at IoU 0.5 (as the stage analysis
defines them), dashed boxes are not.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from PIL import Image

from sqr.config import instantiate
from sqr.tools import analyze_stages  # the model and data set-up are shared with it
from sqr.utils.cli import default_argument_parser

if TYPE_CHECKING:
    import torch

# Everything that imports torch is imported inside the functions, so that --help (parsed before
# any of them runs) answers without loading it.

logger = logging.getLogger("sqr.visualize")

FIGURE_FILE = "stage_grid.png"
TP_IOU = 0.5


def _id_list(text: str) -> list[int]:
    # One token, so that the key=value overrides after it are not taken for ids.
    return [int(part) for part in text.split(",") if part]


def build_parser():
    parser = default_argument_parser(
        epilog="Example:\n  sqr-visualize --config-file cfg.py --image-ids 3,17 "
        "train.init_checkpoint=model.pth",
        training=False,
        distributed=False,
    )
    parser.add_argument(
        "--image-ids",
        type=_id_list,
        default=None,
        help="comma-separated image ids to draw, e.g. 3,17 (default: the first --num-images)",
    )
    parser.add_argument(
        "--num-images", type=int, default=4, help="without --image-ids: the first N test images"
    )
    parser.add_argument("--top-k", type=int, default=5, help="queries drawn per stage")
    parser.add_argument("--min-score", type=float, default=0.0, help="hide lower-scored queries")
    parser.add_argument(
        "--output-dir", default=None, help="where to write (default: {train.output_dir}/visualize)"
    )
    return parser


def select_records(records: list[dict], image_ids: list[int] | None, num: int) -> list[dict]:
    """The records of ``image_ids`` in that order, or the first ``num``."""
    if image_ids is None:
        return records[:num]
    by_id = {record["image_id"]: record for record in records}
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise ValueError(f"--image-ids {missing} are not in the test dataset")
    return [by_id[i] for i in image_ids]


def stage_panels(
    prediction: dict[str, torch.Tensor], gt: dict[str, torch.Tensor], top_k: int, min_score: float
) -> list[list[dict]]:
    """Per stage, the drawn queries: ``{"query", "box", "label", "score", "tp"}``, best first.

    Args:
        prediction: per-query predictions of one image (``boxes`` [S, Q, 4], ``scores`` and
            ``labels`` [S, Q]), from :func:`sqr.evaluation.stages.query_predictions`.
        gt: ``{"boxes": [N, 4], "labels": [N]}`` of the image.
        top_k: queries kept per stage, by score.
        min_score: queries below it are dropped.
    """
    from sqr.evaluation.stage_analysis import match_stage

    panels = []
    for boxes, scores, labels in zip(
        prediction["boxes"], prediction["scores"], prediction["labels"], strict=True
    ):
        tp, _ = match_stage(boxes, scores, labels, gt["boxes"], gt["labels"], TP_IOU)
        order = scores.argsort(descending=True)[:top_k]
        panels.append(
            [
                {
                    "query": int(q),
                    "box": boxes[q].tolist(),
                    "label": int(labels[q]),
                    "score": float(scores[q]),
                    "tp": bool(tp[q].any()),
                }
                for q in order
                if scores[q] >= min_score
            ]
        )
    return panels


def draw_grid(rows: list[dict], class_names: list[str], path: str) -> None:
    """One row per image: ground truth, then one panel per stage (see the module docstring).

    Args:
        rows: per image ``{"image": PIL image, "image_id", "gt": {"boxes", "labels"},
            "panels": stage_panels(...)}``.
        class_names: names of the contiguous class ids.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    num_stages = len(rows[0]["panels"])
    fig, axes = plt.subplots(
        len(rows), num_stages + 1, figsize=(2.6 * (num_stages + 1), 2.8 * len(rows)), squeeze=False
    )
    colours = plt.get_cmap("tab20")

    def box(ax, xyxy, colour, style, text):
        x0, y0, x1, y1 = xyxy
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.5, ls=style))
        ax.text(x0, y0, text, color="white", fontsize=6, va="bottom", backgroundcolor=colour)

    for row, axes_row in zip(rows, axes, strict=True):
        for ax in axes_row:
            ax.imshow(row["image"])
            ax.set_axis_off()
        axes_row[0].set_title(f"image {row['image_id']}: ground truth", fontsize=8, pad=12)
        for xyxy, label in zip(
            row["gt"]["boxes"].tolist(), row["gt"]["labels"].tolist(), strict=True
        ):
            box(axes_row[0], xyxy, "black", "-", class_names[label])
        for s, (ax, panel) in enumerate(zip(axes_row[1:], row["panels"], strict=True)):
            ax.set_title(f"stage {s + 1}", fontsize=8, pad=12)
            for p in panel:
                text = f"q{p['query']} {class_names[p['label']]} {p['score']:.2f}"
                box(ax, p["box"], colours(p["query"] % 20), "-" if p["tp"] else "--", text)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args) -> str:
    from sqr.data import build_detection_test_loader
    from sqr.data.catalog import load_dataset
    from sqr.evaluation.stages import predict_stages, query_predictions

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    cfg = analyze_stages.setup(args, default_subdir="visualize")
    model = analyze_stages.build_model(cfg)
    records = select_records(
        analyze_stages.load_test_records(cfg, None), args.image_ids, args.num_images
    )
    dataset = cfg.dataloader.test.dataset
    class_names = load_dataset(dataset if isinstance(dataset, str) else dataset[0])[1].thing_classes
    loader = build_detection_test_loader(records, instantiate(cfg.dataloader.test.mapper))
    rows = []
    for inputs, record in zip(loader, records, strict=True):
        logits, boxes = predict_stages(model, inputs)
        prediction = {k: v.cpu() for k, v in query_predictions(logits, boxes, inputs)[0].items()}
        gt = analyze_stages.ground_truth(record)
        with Image.open(record["file_name"]) as image:
            rows.append(
                {
                    "image": image.convert("RGB"),
                    "image_id": record["image_id"],
                    "gt": gt,
                    "panels": stage_panels(prediction, gt, args.top_k, args.min_score),
                }
            )
    path = os.path.join(cfg.train.output_dir, FIGURE_FILE)
    draw_grid(rows, class_names, path)
    logger.info("Wrote %s (%d images, %d stages)", path, len(rows), logits.shape[0])
    return path


def invoke_main(argv: list[str] | None = None) -> None:
    main(build_parser().parse_args(argv))


if __name__ == "__main__":
    invoke_main()
