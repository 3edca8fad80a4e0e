"""The model EMA: RT-DETR's update rule, the evaluations and checkpoints that use it, exact resume,
and nothing of it when disabled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.train_net import REPO, load_train_net, parse
from omegaconf import OmegaConf
from torch import nn

from sqr.config import instantiate
from sqr.engine import (
    EMAHook,
    IncompatibleCheckpointError,
    ModelEMA,
    Trainer,
    check_train_options,
    ema_enabled,
    load_config,
    trained_weights,
)

STANDIN_BN_CONFIG = str(REPO / "tests" / "configs" / "standin_bn_synthetic.py")
# A fast ramp, so that a few iterations move the average visibly away from the model.
EMA = ("train.ema.enabled=True", "train.ema.decay=0.9", "train.ema.warmups=2")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        self.norm = nn.BatchNorm1d(1).double()


def set_state(model: Tiny, weight: float, running_mean: float, tracked: int) -> None:
    with torch.no_grad():
        model.weight.fill_(weight)
        model.norm.running_mean.fill_(running_mean)
        model.norm.num_batches_tracked.fill_(tracked)


def test_update_rule_with_warmup_decay_on_parameters_and_buffers() -> None:
    model = Tiny()
    ema = ModelEMA(model, decay=0.9, warmups=2)
    # d_n = 0.9 * (1 - exp(-n / 2)), by hand: d_1 = 0.9 * 0.393469340287 = 0.354122406259,
    # d_2 = 0.9 * 0.632120558829 = 0.568908502946.
    assert ema.decay_at(1) == pytest.approx(0.354122406258630, rel=1e-12)
    assert ema.decay_at(2) == pytest.approx(0.568908502945702, rel=1e-12)

    set_state(model, weight=3.0, running_mean=4.0, tracked=7)
    ema.update(model)
    # weight: d_1 * 1 + (1 - d_1) * 3; running mean: d_1 * 0 + (1 - d_1) * 4.
    assert ema.updates == 1
    assert ema.module.weight.item() == pytest.approx(2.291755187482740, rel=1e-12)
    assert ema.module.norm.running_mean.item() == pytest.approx(2.583510374965480, rel=1e-12)

    set_state(model, weight=5.0, running_mean=-2.0, tracked=9)
    ema.update(model)
    # weight: d_2 * 2.29175518748274 + (1 - d_2) * 5; running mean: d_2 * 2.58351 + (1 - d_2) * -2.
    assert ema.updates == 2
    assert ema.module.weight.item() == pytest.approx(3.459256498100342, rel=1e-12)
    assert ema.module.norm.running_mean.item() == pytest.approx(0.607598025657705, rel=1e-12)
    assert ema.module.norm.running_var.item() == 1.0  # the model's stayed 1: so does the average
    # Integer state is not averaged: it keeps the value of the copy.
    assert ema.module.norm.num_batches_tracked.item() == 0
    # The copy is a separate, frozen eval-mode module; the model is untouched.
    assert not ema.module.training and not ema.module.weight.requires_grad
    assert model.weight.item() == 5.0 and model.weight.requires_grad


def test_state_round_trip_and_bad_states() -> None:
    model = Tiny()
    ema = ModelEMA(model, decay=0.9, warmups=2)
    set_state(model, 3.0, 4.0, 1)
    ema.update(model)
    other = ModelEMA(Tiny(), decay=0.9, warmups=2)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    for key, value in ema.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[key], value), key

    with pytest.raises(ValueError, match="'updates' must be a non-negative integer, got -1"):
        other.load_state_dict({"module": ema.module.state_dict(), "updates": -1})
    with pytest.raises(ValueError, match="does not fit the model"):
        other.load_state_dict({"module": {"weight": torch.zeros(1)}, "updates": 1})
    for bad in ({"decay": 1.0}, {"decay": -0.1}, {"warmups": 0}, {"warmups": 2.5}):
        with pytest.raises(ValueError, match="EMA (decay|warmups) must be"):
            ModelEMA(model, **bad)


def test_config_values_are_checked_by_key() -> None:
    train = OmegaConf.create({"checkpointer": {"period": 1}, "eval_period": 0, "log_period": 1})
    train.ema = {"enabled": True, "decay": 1.5, "warmups": 2}
    with pytest.raises(
        ValueError, match=r"train\.ema\.decay must be a number in \[0, 1\), got 1.5"
    ):
        check_train_options(train)
    train.ema = {"enabled": True, "decay": 0.9, "warmups": 0}
    with pytest.raises(ValueError, match="train.ema.warmups must be a positive integer, got 0"):
        check_train_options(train)


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


@pytest.fixture
def evaluated(train_net, monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The state_dict of every model that train_net evaluates, in order (no COCO evaluation)."""
    seen: list[dict[str, torch.Tensor]] = []

    def record(cfg, model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {}

    monkeypatch.setattr(train_net, "do_test", record)
    return seen


def run_bn(train_net, out: Path, *overrides: str, flags: tuple[str, ...] = ()):
    """train_net.main on the BatchNorm stand-in (buffers that training changes)."""
    args = parse("--config-file", STANDIN_BN_CONFIG, *flags, f"train.output_dir={out}", *overrides)
    return train_net.main(args)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_evaluations_and_checkpoints_use_the_ema(
    train_net, evaluated, datasets_dir, tmp_path: Path
) -> None:
    out = tmp_path / "train"
    periods = ("train.max_iter=4", "train.checkpointer.period=2", "train.eval_period=2")
    run_bn(train_net, out, *EMA, *periods)
    middle, final = load(out / "model_0000001.pth"), load(out / "model_final.pth")
    assert middle["ema"]["updates"] == 2 and final["ema"]["updates"] == 4
    assert "conv1.1.running_mean" in final["ema"]["module"]
    # The average is not the trained weights, which stay under "model".
    differ = [k for k, v in final["model"].items() if not torch.equal(v, final["ema"]["module"][k])]
    assert "head.weight" in differ and "conv1.1.running_mean" in differ
    # The periodic evaluation (after iteration 1) and the final one saw the averages saved.
    assert len(evaluated) == 2
    assert_equal_states(evaluated[0], middle["ema"]["module"])
    assert_equal_states(evaluated[1], final["ema"]["module"])

    # --eval-only evaluates the average with train.ema.enabled, the trained weights without.
    flags = ("--eval-only",)
    checkpoint = f"train.init_checkpoint={out / 'model_final.pth'}"
    run_bn(train_net, tmp_path / "eval", *EMA, checkpoint, flags=flags)
    assert_equal_states(evaluated[2], final["ema"]["module"])
    run_bn(train_net, tmp_path / "eval_model", checkpoint, flags=flags)
    assert_equal_states(evaluated[3], final["model"])

    # Training from it: the average starts from the loaded trained weights (not the model's
    # initialisation, which is far from them), which its first update (d_1 = 0.354122406258630)
    # mixes with those after the step: solve that update for the start.
    run_bn(train_net, tmp_path / "finetune", *EMA, checkpoint, "train.max_iter=1")
    tuned = load(tmp_path / "finetune" / "model_final.pth")
    d1 = 0.354122406258630
    for key in ("head.weight", "conv1.1.running_mean"):
        start = (tuned["ema"]["module"][key] - (1 - d1) * tuned["model"][key]) / d1
        torch.testing.assert_close(start, final["model"][key], rtol=1e-5, atol=1e-5)


def test_resume_restores_the_ema_exactly(
    train_net, evaluated, datasets_dir, tmp_path: Path, monkeypatch
) -> None:
    common = (*EMA, "train.max_iter=6", "train.checkpointer.period=3")
    run_bn(train_net, tmp_path / "straight", *common)

    original_step = Trainer.run_step

    def killed_at_4(self):
        if self.iter == 4:
            raise KeyboardInterrupt("simulated kill")
        original_step(self)

    monkeypatch.setattr(Trainer, "run_step", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        run_bn(train_net, tmp_path / "resumed", *common)
    monkeypatch.setattr(Trainer, "run_step", original_step)
    assert load(tmp_path / "resumed" / "model_0000002.pth")["ema"]["updates"] == 3

    run_bn(train_net, tmp_path / "resumed", *common, flags=("--resume",))
    assert "Resuming the EMA at update 3" in (tmp_path / "resumed" / "log.txt").read_text()
    straight = load(tmp_path / "straight" / "model_final.pth")
    resumed = load(tmp_path / "resumed" / "model_final.pth")
    assert straight["ema"]["updates"] == resumed["ema"]["updates"] == 6
    assert_equal_states(straight["ema"]["module"], resumed["ema"]["module"])
    assert_equal_states(straight["model"], resumed["model"])
    # The final evaluations (straight, then resumed) saw the same average.
    assert_equal_states(evaluated[0], evaluated[-1])


def test_disabled_has_no_ema_and_trains_as_before(
    train_net, evaluated, datasets_dir, tmp_path: Path, monkeypatch
) -> None:
    registered = []
    original_register = Trainer.register_hooks

    def spy(self, hooks):
        registered.extend(type(hook) for hook in hooks if hook is not None)
        original_register(self, hooks)

    monkeypatch.setattr(Trainer, "register_hooks", spy)
    run_bn(train_net, tmp_path / "off", "train.max_iter=3")
    assert EMAHook not in registered
    off = load(tmp_path / "off" / "model_final.pth")
    assert "ema" not in off
    assert_equal_states(evaluated[0], off["model"])  # the final evaluation saw the model

    # A config from before train.ema existed trains the same weights.
    args = parse(
        "--config-file",
        STANDIN_BN_CONFIG,
        f"train.output_dir={tmp_path / 'old'}",
        "train.max_iter=3",
    )
    cfg = train_net.setup(args)
    del cfg.train["ema"]
    train_net.do_train(cfg, args, instantiate(cfg.model).to(cfg.train.device))
    assert_equal_states(load(tmp_path / "old" / "model_final.pth")["model"], off["model"])

    # Keeping an average does not change training: the trained weights are the same.
    run_bn(train_net, tmp_path / "on", *EMA, "train.max_iter=3")
    assert_equal_states(load(tmp_path / "on" / "model_final.pth")["model"], off["model"])

    # --eval-only asking for the average of a checkpoint that has none is refused, by name.
    weights = tmp_path / "off" / "model_final.pth"
    with pytest.raises(IncompatibleCheckpointError, match=f"{weights} has no EMA weights"):
        run_bn(
            train_net,
            tmp_path / "eval",
            *EMA,
            f"train.init_checkpoint={weights}",
            flags=("--eval-only",),
        )


def test_standin_config_default_is_off(train_net) -> None:
    cfg = load_config(parse("--config-file", STANDIN_BN_CONFIG))
    assert not ema_enabled(cfg) and trained_weights(cfg) == "model"
    assert dict(cfg.train.ema) == {"enabled": False, "decay": 0.9999, "warmups": 2000}
