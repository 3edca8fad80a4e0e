"""The README's "your own dataset" example, run as written: its files, then its commands.

The example lives in the "### Datasets" subsection of README.md. A fenced block whose first line
is ``# my_dataset/<file>`` is that file; the ``python ...`` lines of the bash block are the
commands, run from a temporary directory that stands for the repository root. They run with
this interpreter and this checkout's ``tools/``; the one change is 2 iterations for the README's
schedule.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILE_TITLE = re.compile(r"# (my_dataset/[\w./-]+)\n")
# The json's category names; their ids (3 and 7) are not 1..K.
CLASSES = ("rectangle", "ellipse")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def datasets_section(readme: str) -> str:
    """The text of the "### Datasets" subsection, up to the next heading of level 1 to 3.

    Lines inside fenced blocks are never headings: the example's ``# my_dataset/...`` titles
    and comments look like them.
    """
    lines, inside, in_fence = [], False, False
    for line in readme.splitlines(keepends=True):
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,3} ", line):
            if inside:
                break
            inside = line.strip() == "### Datasets"
            continue
        if inside:
            lines.append(line)
    if not lines:
        raise AssertionError("README.md has no '### Datasets' subsection")
    return "".join(lines)


def example(section: str) -> tuple[dict[str, str], list[str]]:
    """The example's files ``{relative path: text}`` and its commands, in README order."""
    files, commands = {}, []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```$", section, flags=re.M | re.S):
        title = FILE_TITLE.match(body)
        if title:
            files[title.group(1)] = body
        elif language == "bash":
            joined = body.replace("\\\n", " ")  # line continuations
            commands += [line for line in joined.splitlines() if line.startswith("python ")]
    return files, commands


def runnable(command: str) -> list[str]:
    """``command`` with this interpreter, this checkout's tools and a 2-iteration schedule."""
    argv = shlex.split(command)
    argv[0] = sys.executable
    if argv[1].startswith("tools/"):
        argv[1] = str(REPO / argv[1])
    return [re.sub(r"^train\.max_iter=\d+$", "train.max_iter=2", arg) for arg in argv]


def run(argv: list[str], cwd: Path) -> str:
    env = dict(os.environ, DETECTRON2_DATASETS=str(cwd / "datasets"))
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{output[-4000:]}"
    return output


@pytest.mark.slow
def test_readme_custom_dataset_example(tmp_path: Path) -> None:
    files, commands = example(datasets_section((REPO / "README.md").read_text()))
    assert sorted(files) == ["my_dataset/make_dataset.py", "my_dataset/my_config.py"]
    make, train, evaluate = commands  # exactly these three, in this order
    assert make == "python my_dataset/make_dataset.py"
    assert "--config-file my_dataset/my_config.py" in train and "train.max_iter=" in train
    assert "--eval-only" in evaluate and "train.init_checkpoint=" in evaluate
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)

    run(runnable(make), tmp_path)
    data = json.loads((tmp_path / "my_dataset" / "annotations" / "train.json").read_text())
    assert sorted(c["id"] for c in data["categories"]) == [3, 7]  # not contiguous
    suffixes = {Path(p).suffix for p in os.listdir(tmp_path / "my_dataset" / "images")}
    assert suffixes == {".jpg", ".png"}

    # Training registers the datasets in the config file, which the tool loads twice.
    run(runnable(train), tmp_path)
    output_dir = tmp_path / "output" / "my_dataset"
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    final = [row for row in rows if "bbox/AP" in row]
    assert len(final) == 1 and final[0]["iteration"] == 1  # evaluated after the 2 iterations
    per_category = {f"bbox/AP-{name}" for name in CLASSES}
    assert {f"bbox/{m}" for m in METRICS} | per_category <= set(final[0])
    for key in per_category:  # both classes have ground truth in val: a number, not null
        assert 0.0 <= final[0][key] <= 100.0

    run(runnable(evaluate), tmp_path)
    results = json.loads((output_dir / "eval_results.json").read_text())["results"]["bbox"]
    assert list(results) == [*METRICS, *(f"AP-{name}" for name in CLASSES)]
    assert all(not math.isnan(results[f"AP-{name}"]) for name in CLASSES)
    assert "Evaluation results for bbox on my_val" in (output_dir / "log.txt").read_text()
