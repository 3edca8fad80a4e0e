"""``--resume`` applies what the command line changed, says so, and loses no record of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.train_net import load_train_net, run_standin

from sqr.engine import IncompatibleCheckpointError


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


def test_last_checkpoint_naming_a_missing_file(train_net, datasets_dir, tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(FileNotFoundError) as info:
        run_standin(train_net, tmp_path, "train.max_iter=2", flags=("--resume",))
    message = str(info.value)
    assert f"{tmp_path / 'last_checkpoint'} names {tmp_path / 'model_0000009.pth'}" in message
    assert "does not exist" in message
    assert "rank" not in message and "shared filesystem" not in message


def lr_by_iteration(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return {r["iteration"]: r["lr"] for r in rows if "lr" in r}


def test_resume_applies_changed_lr_and_max_iter(train_net, datasets_dir, tmp_path: Path) -> None:
    # 4 iterations at lr 1e-3 (the drop at 80% of 4 iterations is past the end), then resumed
    # for 6 in all at lr 0.01: iteration 4 is before 80% of 6, iteration 5 after it.
    run_standin(train_net, tmp_path, "train.max_iter=4", "train.log_period=1")
    first = (tmp_path / "config.yaml").read_text()
    run_standin(
        train_net,
        tmp_path,
        "train.max_iter=6",
        "optimizer.lr=0.01",
        "optimizer.weight_decay=0.5",
        "train.log_period=1",
        flags=("--resume",),
    )
    lrs = lr_by_iteration(tmp_path)
    assert [lrs[i] for i in range(4)] == pytest.approx([1e-3] * 4)
    assert [lrs[4], lrs[5]] == pytest.approx([0.01, 0.001])
    log = (tmp_path / "log.txt").read_text()
    assert "base learning rates [0.001] in the checkpoint, [0.01] in the config" in log
    assert "max_iter 4 in the checkpoint, 6 in the config" in log
    assert "has weight_decay 0.0001 in the checkpoint, 0.5 in the config" in log
    # The first run's record is kept; the resumed run's is next to it.
    assert (tmp_path / "config.yaml").read_text() == first
    resumed = yaml.safe_load((tmp_path / "config.resume1.yaml").read_text())
    assert resumed["optimizer"]["lr"] == 0.01 and resumed["train"]["max_iter"] == 6


def test_refused_resume_writes_no_config(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(train_net, tmp_path, "train.max_iter=2", "+model.num_queries=4")
    first = (tmp_path / "config.yaml").read_text()
    with pytest.raises(IncompatibleCheckpointError):
        run_standin(
            train_net, tmp_path, "train.max_iter=4", "+model.num_queries=5", flags=("--resume",)
        )
    with pytest.raises(ValueError, match=r"model_final\.pth ends at iteration 2, and "):
        run_standin(
            train_net, tmp_path, "train.max_iter=2", "+model.num_queries=4", flags=("--resume",)
        )
    assert (tmp_path / "config.yaml").read_text() == first
    assert sorted(p.name for p in tmp_path.glob("config*.yaml")) == ["config.yaml"]
