"""End-to-end runs of tools/train_net.py with the stand-in detector on synthetic shapes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers.standin import StandInDetector
from helpers.train_net import REPO, load_train_net, parse, run_standin

from sqr.config import instantiate
from sqr.data import register_coco_instances
from sqr.engine import IncompatibleCheckpointError, Trainer


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


STANDIN_BN_CONFIG = str(REPO / "tests" / "configs" / "standin_bn_synthetic.py")


def final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


def metrics_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


def test_training_writes_detectron2_layout(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(
        train_net,
        tmp_path,
        "train.max_iter=6",
        "train.checkpointer.period=3",
        "train.eval_period=3",
    )
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "config.yaml",
        "log.txt",
        "metrics.json",
        "last_checkpoint",
        "model_0000002.pth",
        "model_0000005.pth",
        "model_final.pth",
        "inference",
    } <= names
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert (tmp_path / "inference" / "coco_instances_results.json").is_file()
    rows = metrics_rows(tmp_path)
    train_rows = [r for r in rows if "total_loss" in r]
    eval_rows = [r for r in rows if "bbox/AP" in r]
    assert train_rows and all("lr" in r and "loss_box" in r for r in train_rows)
    # One evaluation mid-way (after iteration 2) and the final one (reported at iteration 5).
    assert [r["iteration"] for r in eval_rows] == [2, 5]
    log = (tmp_path / "log.txt").read_text()
    assert "128 iterations per epoch" in log  # 512 synthetic images / total batch 4
    assert "Environment info" in log and "Load report" not in log
    assert "eta: " in log and "max_mem: " in log  # the console line
    if importlib.util.find_spec("tensorboard") is not None:  # part of the dev extra
        assert list(tmp_path.glob("events.out.tfevents.*"))


def test_max_to_keep(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(
        train_net,
        tmp_path,
        "train.max_iter=5",
        "train.checkpointer.period=1",
        "train.checkpointer.max_to_keep=2",
    )
    kept = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert kept == ["model_0000003.pth", "model_0000004.pth", "model_final.pth"]


def test_resume_equals_uninterrupted_run(
    train_net, datasets_dir, tmp_path: Path, monkeypatch
) -> None:
    # 6 iterations, checkpoint every 3; the lr drops at 0.8 * 6 = 4.8, i.e. after the resume,
    # and the stand-in's dropout draws from the RNG, so all restored state matters.
    common = ("train.max_iter=6", "train.checkpointer.period=3")
    run_standin(train_net, tmp_path / "straight", *common)

    original_step = Trainer.run_step

    def killed_at_4(self):
        # The state after iteration 2 is written once iteration 3 has proven it finite.
        if self.iter == 4:
            raise KeyboardInterrupt("simulated kill")
        original_step(self)

    monkeypatch.setattr(Trainer, "run_step", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        run_standin(train_net, tmp_path / "resumed", *common)
    monkeypatch.setattr(Trainer, "run_step", original_step)
    assert (tmp_path / "resumed" / "last_checkpoint").read_text() == "model_0000002.pth"
    assert not (tmp_path / "resumed" / "model_final.pth").exists()

    run_standin(train_net, tmp_path / "resumed", *common, flags=("--resume",))
    log = (tmp_path / "resumed" / "log.txt").read_text()
    assert "model_0000002.pth at iteration 3" in log
    straight, resumed = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_without_checkpoint_starts_fresh(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(train_net, tmp_path, "train.max_iter=1", flags=("--resume",))
    assert "no last_checkpoint" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "model_final.pth").is_file()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(
    train_net, datasets_dir, tmp_path: Path, monkeypatch
) -> None:
    calls = {"n": 0}
    original = StandInDetector.losses

    def nan_from_iteration_4(self, *args):
        losses = original(self, *args)
        calls["n"] += 1
        if calls["n"] > 4:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    monkeypatch.setattr(StandInDetector, "losses", nan_from_iteration_4)
    with pytest.raises(
        FloatingPointError,
        match=r"Non-finite loss on rank\(s\) \[0\].* at iteration 4\. Loss terms on rank 0: "
        r"loss_cls=nan, loss_box=",
    ):
        run_standin(train_net, tmp_path, "train.max_iter=8", "train.checkpointer.period=2")
    # The state after iteration 3 gave the non-finite loss, so it is not saved: the last
    # checkpoint is the one of iteration 1, which iteration 2 proved finite.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=True)["iteration"] == 1
    assert not (tmp_path / "model_0000003.pth").exists()
    assert not (tmp_path / "model_final.pth").exists()


def test_init_checkpoint_and_eval_only(train_net, datasets_dir, tmp_path: Path) -> None:
    run_standin(train_net, tmp_path / "train", "train.max_iter=2")
    weights = tmp_path / "train" / "model_final.pth"

    results = run_standin(
        train_net, tmp_path / "eval", f"train.init_checkpoint={weights}", flags=("--eval-only",)
    )
    per_category = {f"AP-{c}" for c in ("circle", "square", "triangle", "cross")}
    assert set(results["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} | per_category
    saved = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert saved["results"]["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"], nan_ok=True)
    assert saved["checkpoint"] == str(weights)
    assert (
        f"Load report for {weights}: matched 6, missing 0, unexpected 0"
        in (tmp_path / "eval" / "log.txt").read_text()
    )

    # Weights for a different model fill nothing: eval-only refuses them.
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, other)
    with pytest.raises(IncompatibleCheckpointError, match=r"--eval-only: .*none of its 1 tensors"):
        run_standin(
            train_net, tmp_path / "eval2", f"train.init_checkpoint={other}", flags=("--eval-only",)
        )

    # init_checkpoint when training: weights only, with a load report.
    run_standin(
        train_net, tmp_path / "finetune", "train.max_iter=1", f"train.init_checkpoint={weights}"
    )
    assert "Load report for" in (tmp_path / "finetune" / "log.txt").read_text()


def test_schedule_in_epochs(train_net, datasets_dir, synthetic_root: Path, tmp_path: Path) -> None:
    name = "synthetic_small_train_epochs"
    register_coco_instances(
        name, str(synthetic_root / "annotations" / "train.json"), str(synthetic_root / "train")
    )
    # 8 images with total batch 4: 2 iterations per epoch, so 3 epochs are 6 iterations.
    run_standin(
        train_net,
        tmp_path,
        f"dataloader.train.dataset={name}",
        "train.max_iter=None",
        "train.max_epochs=3",
        "train.eval_period=0",
    )
    assert "2 iterations per epoch" in (tmp_path / "log.txt").read_text()
    assert max(r["iteration"] for r in metrics_rows(tmp_path)) == 5

    with pytest.raises(ValueError, match="max_iter=10, max_epochs=3"):
        run_standin(
            train_net,
            tmp_path / "both",
            f"dataloader.train.dataset={name}",
            "train.max_iter=10",
            "train.max_epochs=3",
        )


def test_final_evaluation_is_of_the_saved_model(train_net, datasets_dir, tmp_path: Path) -> None:
    # BatchNorm's running statistics change in every training-mode forward pass, including the
    # final state's check after the last step: that check must leave the model as it was saved.
    out = tmp_path / "train"
    args = parse("--config-file", STANDIN_BN_CONFIG, f"train.output_dir={out}", "train.max_iter=3")
    cfg = train_net.setup(args)
    model = instantiate(cfg.model).to(cfg.train.device)
    train_net.do_train(cfg, args, model)

    saved, in_memory = final_state(out), model.state_dict()
    assert "conv1.1.running_mean" in saved and saved.keys() == in_memory.keys()
    for key in saved:
        assert torch.equal(saved[key], in_memory[key]), key
    (final,) = [r for r in metrics_rows(out) if "bbox/AP" in r]
    results = train_net.main(
        parse(
            "--config-file",
            STANDIN_BN_CONFIG,
            "--eval-only",
            f"train.output_dir={tmp_path / 'eval'}",
            f"train.init_checkpoint={out / 'model_final.pth'}",
        )
    )
    assert final["bbox/AP"] > 0  # a number that the model's outputs move
    assert results["bbox"]["AP"] == final["bbox/AP"]
    assert results["bbox"]["AP50"] == final["bbox/AP50"]
