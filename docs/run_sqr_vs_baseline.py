#!/usr/bin/env python
"""SQR vs baseline on the synthetic shapes data: train both, analyse every stage, print a table.

    python docs/run_sqr_vs_baseline.py                       # the experiment of sqr_vs_baseline.md
    python docs/run_sqr_vs_baseline.py --write-doc           # ... and fill the table in the .md
    python docs/run_sqr_vs_baseline.py --root /tmp/try -- train.max_iter=20   # a quick dry run

Both runs use the quickstart config and the same seed (so the same initial weights, since SQR
adds no parameters, and the same data order); the baseline differs only in
``model.recollection.mode=none``. Each run is trained with ``tools/train_net.py`` into
``ROOT/{baseline,sqr}``, then analysed with ``tools/analyze_stages.py`` on the whole val split
(``ROOT/<run>/stage_analysis/``); ``tools/plot_metrics.py`` draws both runs' training curves into
``ROOT/curves.png``. Overrides after ``--`` go to every command of both runs. ``--reuse`` skips
the training of a run whose ``model_final.pth`` exists.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "projects/sqr/configs/quickstart/sqr_dab_detr_synthetic.py"
DOC = REPO / "docs" / "sqr_vs_baseline.md"
RUNS = {"baseline": ["model.recollection.mode=none"], "sqr": []}
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], cwd=REPO, check=True)


def experiment(root: Path, seed: int, overrides: list[str], reuse: bool) -> dict[str, dict]:
    """Train and analyse both runs; return each run's ``stage_analysis.json``."""
    results = {}
    for name, variant in RUNS.items():
        out = root / name
        common = [f"train.output_dir={out}", f"train.seed={seed}", *variant, *overrides]
        if not (reuse and (out / "model_final.pth").is_file()):
            run(["tools/train_net.py", "--config-file", CONFIG, *common])
        analysis = out / "stage_analysis"
        run(
            ["tools/analyze_stages.py", "--config-file", CONFIG, "--output-dir", str(analysis)]
            + [*common, f"train.init_checkpoint={out / 'model_final.pth'}"]
        )
        results[name] = json.loads((analysis / "stage_analysis.json").read_text())
    dirs = [str(root / name) for name in RUNS]
    run(["tools/plot_metrics.py", *dirs, "--per-group", "--output", str(root / "curves.png")])
    return results


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rate(rates: dict, key: str) -> str:
    value, count = rates[f"{key}_rate"], rates[key.split("_")[0]]
    return "-" if value is None else f"{100 * value:.1f} % (of {count})"


def table(results: dict[str, dict]) -> str:
    """Markdown table: one column per run, rows for AP per stage, the rates and the oracle."""
    names = list(results)
    rows = []
    num_stages = results[names[0]]["num_stages"]
    for s in range(num_stages):
        final = " (final output)" if s == num_stages - 1 else ""
        for key in ("AP", "AP50"):
            rows.append(
                [f"stage {s + 1} {key}{final}"]
                + [_ap(results[n]["stage_ap"][s][key]) for n in names]
            )
    for threshold in results[names[0]]["rates"]:
        for key, label in (("tp_fading", "TP fading"), ("fp_exacerbation", "FP exacerbation")):
            rows.append(
                [f"{label} rate @ IoU {threshold}"]
                + [_rate(results[n]["rates"][threshold], key) for n in names]
            )
    iou = results[names[0]]["oracle"]["iou_threshold"]
    for key, label in (
        ("final_query_AP", "AP, final stage, one label per query"),
        ("oracle_AP", f"AP, oracle (best stage per query, IoU {iou})"),
    ):
        rows.append([label] + [_ap(results[n]["oracle"][key]["AP"]) for n in names])
    rows.append(["images analysed"] + [str(results[n]["num_images"]) for n in names])
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_doc(text: str, command: str) -> None:
    """Replace the block between the result markers of ``docs/sqr_vs_baseline.md``."""
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"{DOC} has no {BEGIN} ... {END} block to fill")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = f"{BEGIN}\nMeasured with `{command}`:\n\n{text}\n{END}"
    DOC.write_text(head + block + tail)
    print(f"updated {DOC}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="output/sqr_vs_baseline", help="output root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="keep finished trainings")
    parser.add_argument("--write-doc", action="store_true", help=f"fill the table in {DOC.name}")
    parser.add_argument("overrides", nargs="*", help="after --: overrides for every command")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_absolute():
        root = REPO / root
    results = experiment(root, args.seed, args.overrides, args.reuse)
    text = table(results)
    print(text)
    if args.write_doc:
        command = " ".join(["python docs/run_sqr_vs_baseline.py", *(argv or sys.argv[1:])])
        write_doc(text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
