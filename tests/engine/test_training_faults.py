"""Faults and bad settings in training never end in a silently wrong result (stand-in model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.standin import StandInDetector
from helpers.train_net import load_train_net, run_standin

from sqr.data import register_coco_instances
from sqr.data.mapper import ImageReadError
from sqr.engine import IncompatibleCheckpointError


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


def strict_json(text: str):
    def refuse(token: str):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_blow_up_is_never_checkpointed(train_net, datasets_dir, tmp_path: Path) -> None:
    # lr 1e30 turns the first step's finite gradients into weights of about 1e30: finite, so no
    # check of that step can see it; the next forward pass overflows.
    with pytest.raises(FloatingPointError, match=r"Non-finite loss .* at iteration 1\. Loss terms"):
        run_standin(
            train_net,
            tmp_path,
            "optimizer.lr=1e30",
            "train.max_iter=4",
            "train.checkpointer.period=1",
        )
    assert not (tmp_path / "last_checkpoint").exists()
    assert not list(tmp_path.glob("model_*.pth"))


def test_non_finite_gradient_stops_before_the_update(
    train_net, datasets_dir, tmp_path: Path, monkeypatch
) -> None:
    original = StandInDetector.losses
    calls = {"n": 0}

    def nan_gradient_at_iteration_2(self, *args):
        losses = original(self, *args)
        calls["n"] += 1
        if calls["n"] == 3:  # from iteration 2 the loss stays finite but a gradient does not
            self.conv1.weight.register_hook(lambda grad: grad * float("nan"))
        return losses

    monkeypatch.setattr(StandInDetector, "losses", nan_gradient_at_iteration_2)
    with pytest.raises(
        FloatingPointError,
        match=r"Non-finite gradients on rank\(s\) \[0\] at iteration 2\..*in conv1\.weight",
    ):
        run_standin(train_net, tmp_path, "train.max_iter=6", "train.checkpointer.period=1")
    # Iteration 2 failed, so the state after iteration 1 was never verified.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert not (tmp_path / "model_0000001.pth").exists()
    state = torch.load(tmp_path / "model_0000000.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_fp16_overflow_is_skipped_not_an_error(
    train_net, datasets_dir, tmp_path: Path, monkeypatch
) -> None:
    original = StandInDetector.losses
    calls = {"n": 0}

    def inf_gradient_once(self, *args):
        losses = original(self, *args)
        calls["n"] += 1
        if calls["n"] == 2:
            self.conv1.weight.register_hook(lambda grad: grad * float("inf"))
        return losses

    monkeypatch.setattr(StandInDetector, "losses", inf_gradient_once)
    run_standin(
        train_net,
        tmp_path,
        "train.amp.enabled=True",
        "train.amp.dtype=float16",
        "train.max_iter=3",
        "train.checkpointer.period=1",
    )
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=True)
    # The scaler skipped the overflowing step and halved its scale (65536 at the start).
    assert checkpoint["trainer"]["grad_scaler"]["scale"] < 65536.0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_iter=-1", "train.max_iter must be a positive integer, got -1"),
        ("train.max_iter=0", "train.max_iter must be a positive integer, got 0"),
        ("train.max_iter=abc", "train.max_iter must be a positive integer, got 'abc'"),
        ("train.max_iter=2.5", "train.max_iter must be a positive integer, got 2.5"),
        ("train.checkpointer.period=0", "train.checkpointer.period must be a positive integer"),
        ("train.checkpointer.max_to_keep=0", "train.checkpointer.max_to_keep must be a positive"),
        ("train.eval_period=-5", "train.eval_period must be a non-negative integer, got -5"),
        ("train.log_period=0", "train.log_period must be a positive integer, got 0"),
        ("train.clip_grad.params.max_norm=-1", "train.clip_grad.params.max_norm must be posit"),
    ],
)
def test_bad_train_settings_name_key_and_value(
    train_net, datasets_dir, tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_standin(train_net, tmp_path, override)
    assert not list(tmp_path.glob("model_*.pth"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=abc", "optimizer.lr must be a non-negative number, got 'abc'"),
        ("optimizer.lr=[1,2]", "optimizer.lr must be a non-negative number, got [1, 2]"),
        ("optimizer.lr=-0.1", "optimizer.lr must be a non-negative number, got -0.1"),
        ("optimizer.weight_decay=True", "optimizer.weight_decay must be a non-negative number"),
        ("optimizer.betas=[0.9]", "optimizer.betas must be a list of 2 numbers, got [0.9]"),
        (
            "lr_multiplier.warmup_iters=1.5",
            "lr_multiplier.warmup_iters must be a non-negative integer, got 1.5",
        ),
        (
            "lr_multiplier.scheduler.milestones=[x]",
            "lr_multiplier.scheduler.milestones must be a list of non-negative integers, got ['x']",
        ),
        (
            "lr_multiplier.scheduler.values=[1,a]",
            "lr_multiplier.scheduler.values must be a list of non-negative numbers, got [1, 'a']",
        ),
    ],
)
def test_bad_optimizer_and_schedule_settings_name_key_and_value(
    train_net, datasets_dir, tmp_path: Path, override: str, message: str
) -> None:
    escaped = message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    with pytest.raises(ValueError, match=escaped):
        run_standin(train_net, tmp_path, override)
    assert not list(tmp_path.glob("model_*.pth"))


def test_eval_only_refuses_a_checkpoint_of_another_model(
    train_net, datasets_dir, tmp_path: Path
) -> None:
    run_standin(train_net, tmp_path / "train", "train.max_iter=1", "+model.num_queries=4")
    weights = tmp_path / "train" / "model_final.pth"
    # 5 queries instead of 4: only the head differs (17% of the parameters).
    with pytest.raises(IncompatibleCheckpointError, match=r"head\.weight checkpoint \(32, 16\)"):
        run_standin(
            train_net,
            tmp_path / "eval",
            "+model.num_queries=5",
            f"train.init_checkpoint={weights}",
            flags=("--eval-only",),
        )
    assert not (tmp_path / "eval" / "eval_results.json").exists()


def test_init_checkpoint_that_matches_nothing_is_an_error(
    train_net, datasets_dir, tmp_path: Path
) -> None:
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, other)
    with pytest.raises(IncompatibleCheckpointError, match=f"{other}: none of its 1 tensors"):
        run_standin(train_net, tmp_path / "out", f"train.init_checkpoint={other}")


def test_partial_init_checkpoint_warns(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(train_net, tmp_path / "train", "train.max_iter=1", "+model.num_queries=4")
    weights = tmp_path / "train" / "model_final.pth"
    run_standin(
        train_net,
        tmp_path / "finetune",
        "train.max_iter=1",
        "+model.num_queries=5",
        f"train.init_checkpoint={weights}",
    )
    log = (tmp_path / "finetune" / "log.txt").read_text()
    assert "WARNING] Load report for" in log and "shape-mismatched 2" in log
    assert "shape mismatch, skipped: head.weight checkpoint (32, 16) vs model (40, 16)" in log


def test_resume_into_another_model_is_refused(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(train_net, tmp_path, "train.max_iter=2", "+model.num_queries=4")
    with pytest.raises(IncompatibleCheckpointError, match=r"model_final\.pth.*head\.weight"):
        run_standin(
            train_net, tmp_path, "train.max_iter=4", "+model.num_queries=5", flags=("--resume",)
        )


@pytest.mark.parametrize("num_classes", [2, 6])
def test_num_classes_is_checked_against_the_dataset(
    train_net, datasets_dir, tmp_path: Path, monkeypatch, num_classes: int
) -> None:
    # The synthetic shapes have 4 classes.
    if num_classes < 4:
        with pytest.raises(ValueError, match=r"model\.num_classes=2 .* 4 classes"):
            run_standin(train_net, tmp_path, f"model.num_classes={num_classes}", "train.max_iter=1")
        return
    # Only training is under test: the evaluator rightly refuses labels the data lacks.
    monkeypatch.setattr(train_net, "do_test", lambda cfg, model: {})
    run_standin(train_net, tmp_path, f"model.num_classes={num_classes}", "train.max_iter=1")
    assert (
        "WARNING] model.num_classes=6 is larger than the 4 classes"
        in (tmp_path / "log.txt").read_text()
    )


def test_restart_sweeps_temporaries_and_counts_old_checkpoints(
    train_net, datasets_dir, tmp_path: Path
) -> None:
    run_standin(train_net, tmp_path, "train.max_iter=3", "train.checkpointer.period=1")
    (tmp_path / ".tmp_k3j2model_0000007.pth").write_bytes(b"interrupted write")
    run_standin(
        train_net,
        tmp_path,
        "train.max_iter=3",
        "train.checkpointer.period=1",
        "train.checkpointer.max_to_keep=2",
        "train.seed=1",
    )
    assert not list(tmp_path.glob(".tmp_*"))
    kept = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert kept == ["model_0000001.pth", "model_0000002.pth", "model_final.pth"]


def test_result_files_are_strict_json(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(train_net, tmp_path / "train", "train.max_iter=2", "train.eval_period=1")
    weights = tmp_path / "train" / "model_final.pth"
    run_standin(
        train_net, tmp_path / "eval", f"train.init_checkpoint={weights}", flags=("--eval-only",)
    )
    saved = strict_json((tmp_path / "eval" / "eval_results.json").read_text())
    # The synthetic val set has no large object: APl is NaN, written as null.
    assert saved["results"]["bbox"]["APl"] is None
    rows = [strict_json(line) for line in (tmp_path / "train" / "metrics.json").open()]
    assert any(row.get("bbox/APl", 0) is None for row in rows)


def copy_with_missing_image(synthetic_root: Path, tmp_path: Path, split: str, name: str) -> Path:
    """Register a copy of the small synthetic ``split`` whose first image file is deleted;
    returns the deleted file's path."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / split, root / split)
    annotations = json.loads((synthetic_root / "annotations" / f"{split}.json").read_text())
    missing = root / split / annotations["images"][0]["file_name"]
    missing.unlink()
    register_coco_instances(
        name, str(synthetic_root / "annotations" / f"{split}.json"), str(root / split)
    )
    return missing


def test_unknown_test_dataset_fails_before_training(
    train_net, datasets_dir, tmp_path: Path
) -> None:
    with pytest.raises(KeyError, match=r"dataloader\.test\.dataset.*'my_vla'"):
        run_standin(train_net, tmp_path, "dataloader.test.dataset=my_vla")
    assert not (tmp_path / "metrics.json").exists() and not list(tmp_path.glob("model_*"))


@pytest.mark.parametrize("split", ["val", "train"])
def test_missing_image_fails_before_training(
    train_net, datasets_dir, synthetic_root: Path, tmp_path: Path, split: str
) -> None:
    name = f"synthetic_small_{split}_missing_image"
    missing = copy_with_missing_image(synthetic_root, tmp_path, split, name)
    key = "dataloader.test.dataset" if split == "val" else "dataloader.train.dataset"
    with pytest.raises(FileNotFoundError) as info:
        run_standin(train_net, tmp_path / "out", f"{key}={name}")
    message = str(info.value)
    assert f"{key} {name!r}: 1 of" in message and str(missing) in message
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert not list((tmp_path / "out").glob("model_*"))


def test_error_in_training_is_reported_once(
    train_net, datasets_dir, tmp_path: Path, monkeypatch, capsys
) -> None:
    original = StandInDetector.losses
    calls = {"n": 0}

    def unreadable_at_iteration_2(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ImageReadError("cannot read image /data/x.jpg: truncated")
        return original(self, *args)

    monkeypatch.setattr(StandInDetector, "losses", unreadable_at_iteration_2)
    with pytest.raises(ImageReadError):
        run_standin(train_net, tmp_path, "train.max_iter=4")
    console = capsys.readouterr().out
    assert "Exception during training at iteration 2: ImageReadError: cannot read image" in console
    assert "Traceback" not in console  # the interpreter prints it, once
    log = (tmp_path / "log.txt").read_text()
    assert log.count("Traceback (most recent call last)") == 1  # and log.txt keeps it
