"""Plot training curves from ``metrics.json``: loss per decoder stage, total loss, and AP.

    python tools/plot_metrics.py output/quickstart/sqr_dab_detr_synthetic
    python tools/plot_metrics.py output/sqr output/baseline --per-group --output cmp.png

Reads ``OUTPUT_DIR/metrics.json`` (one JSON object per line, written by ``tools/train_net.py``):
training rows carry ``total_loss`` and the losses ``loss_{class,bbox,giou}_s{stage}``, evaluation
rows carry ``bbox/AP`` and friends; both have ``iteration``. A stage's loss is the sum of its
``loss_*_s{stage}`` terms. With SQR a stage's loss adds up all the groups it decodes (1, 2, 3, 5, 8,
13), so ``--per-group`` divides it by that count (read from ``OUTPUT_DIR/config.yaml``) to compare
with a baseline. Several output directories are drawn over each other, one line style per run.
Writes ``metrics.png`` into the first OUTPUT_DIR unless ``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections import defaultdict

logger = logging.getLogger("sqr.plot_metrics")

STAGE_LOSS = re.compile(r"^loss_(?P<term>\w+)_s(?P<stage>\d+)$")
AP_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
LINE_STYLES = ("-", "--", ":", "-.")

Series = dict[str, list[tuple[int, float]]]


def load_metrics(path: str) -> Series:
    """Every scalar of a ``metrics.json`` as ``name -> [(iteration, value)]``, sorted.

    A value written twice for the same iteration (a resumed run repeats iterations) keeps the
    later one. Lines that are not JSON objects (e.g. a line being written) are skipped.
    """
    values: dict[str, dict[int, float]] = defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not a JSON object; skipped", path, number)
                continue
            if not isinstance(row, dict) or "iteration" not in row:
                logger.warning("%s:%d has no 'iteration'; skipped", path, number)
                continue
            iteration = int(row["iteration"])
            for name, value in row.items():
                if name != "iteration" and isinstance(value, int | float):
                    values[name][iteration] = float(value)
    return {name: sorted(points.items()) for name, points in values.items()}


def stage_losses(series: Series) -> dict[int, list[tuple[int, float]]]:
    """Loss of each decoder stage: the sum of its ``loss_*_s{stage}`` terms per iteration.

    Only iterations where every term of the stage was logged count.
    """
    terms: dict[int, list[str]] = defaultdict(list)
    for name in series:
        match = STAGE_LOSS.match(name)
        if match:
            terms[int(match["stage"])].append(name)
    losses = {}
    for stage, names in sorted(terms.items()):
        per_term = [dict(series[name]) for name in names]
        common = set.intersection(*(set(points) for points in per_term))
        losses[stage] = [(it, sum(points[it] for points in per_term)) for it in sorted(common)]
    return losses


def other_losses(series: Series) -> list[str]:
    """``total_loss`` and any loss that belongs to no stage (e.g. a detector without stages)."""
    names = [n for n in series if n.startswith("loss") and not STAGE_LOSS.match(n)]
    return (["total_loss"] if "total_loss" in series else []) + sorted(names)


def groups_per_stage(output_dir: str) -> tuple[int, ...]:
    """Groups each stage decoded in training, from the run's ``config.yaml``."""
    from sqr.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(output_dir, "config.yaml"))
    # The schedule is the recollection setting at the decoder's depth (as the detector builds it).
    schedule = instantiate(cfg.model.recollection).schedule(cfg.model.decoder.num_stages)
    return schedule.groups_per_stage


def plot(runs: dict[str, Series], path: str, groups: dict[str, tuple[int, ...]] | None) -> None:
    """Three panels: stage losses, total/other losses, AP; one line style per run.

    Args:
        runs: run label -> its series (:func:`load_metrics`).
        path: the PNG to write.
        groups: run label -> groups per stage, to plot the loss per group; None for raw sums.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_stage, ax_total, ax_ap) = plt.subplots(1, 3, figsize=(15, 4), sharex=True)
    num_stages = max((len(stage_losses(s)) for s in runs.values()), default=0)
    colours = plt.get_cmap("viridis")
    for i, (label, series) in enumerate(runs.items()):
        style = LINE_STYLES[i % len(LINE_STYLES)]
        prefix = f"{label}: " if len(runs) > 1 else ""
        for stage, points in stage_losses(series).items():
            divisor = groups[label][stage] if groups else 1
            ax_stage.plot(
                [it for it, _ in points],
                [v / divisor for _, v in points],
                ls=style,
                color=colours(stage / max(num_stages - 1, 1)),
                label=f"{prefix}stage {stage + 1}",
            )
        for name in other_losses(series):
            ax_total.plot(*zip(*series[name], strict=True), ls=style, label=prefix + name)
        for name, marker in zip(AP_KEYS, "os^", strict=True):
            if name in series:
                ax_ap.plot(
                    *zip(*series[name], strict=True),
                    ls=style,
                    marker=marker,
                    label=prefix + name.split("/")[1],
                )
    ax_stage.set(
        xlabel="iteration",
        ylabel="loss per group" if groups else "loss (sum over the stage's groups)",
        title="loss per decoder stage",
    )
    ax_total.set(xlabel="iteration", ylabel="loss", title="total loss")
    ax_ap.set(xlabel="iteration", ylabel="COCO AP (%)", title="evaluation")
    for ax, empty in (
        (ax_stage, "no per-stage losses logged"),
        (ax_total, "no losses logged"),
        (ax_ap, "no evaluation rows"),
    ):
        if ax.lines:
            ax.legend(fontsize="x-small", ncol=2 if len(ax.lines) > 8 else 1)
        else:
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR")
    parser.add_argument("--output", default=None, help="PNG path (default OUTPUT_DIR/metrics.png)")
    parser.add_argument(
        "--per-group", action="store_true", help="divide each stage's loss by its group count"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = {}
    for directory in args.output_dirs:
        path = os.path.join(directory, "metrics.json")
        if not os.path.isfile(path):
            print(f"error: {path} does not exist", file=sys.stderr)
            return 1
        runs[os.path.basename(os.path.normpath(directory)) or directory] = load_metrics(path)
    if len(runs) != len(args.output_dirs):
        print("error: the output directories need distinct names", file=sys.stderr)
        return 1
    groups = None
    if args.per_group:
        groups = {
            label: groups_per_stage(d) for label, d in zip(runs, args.output_dirs, strict=True)
        }
    output = args.output or os.path.join(args.output_dirs[0], "metrics.png")
    plot(runs, output, groups)
    print(f"wrote {output}")
    return 0


def invoke_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    invoke_main()
