"""``train.compile``: the trainer compiles the model in place, and the losses equal eager ones.

The compiled run uses the ``aot_eager`` backend: TorchDynamo captures the graphs (breaking at the
matcher's host solve) and AOTAutograd traces forward and backward, as for inductor, but runs the
traced graphs with eager kernels, so the model compiles in seconds on two CPU cores instead of
minutes of C++ code generation. Inductor itself is exercised with ``train.compile=True`` in the
slow test (it needs a C++ compiler, which CPU inductor runs).
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch
from helpers.tiny import TINY_DEFORMABLE_DETR

from sqr.config import LazyConfig, instantiate
from sqr.engine.compile import compile_options
from sqr.engine.train_loop import Trainer
from sqr.tools._workload import synthetic_batch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "projects/sqr/configs/sqr_deformable_detr_r50_50ep.py"
# No dropout (compiled graphs draw other random numbers); one encoder and two decoder layers
# (three SQR groups) keep the tracing short.
SMALL = ["model.encoder.dropout=0.0", "model.decoder.dropout=0.0"]
SMALL += ["model.encoder.num_layers=1", "model.decoder.num_stages=2"]
STEPS = 2


def test_options_from_the_config_value() -> None:
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {}
    assert compile_options({"backend": "aot_eager", "dynamic": False}) == {
        "backend": "aot_eager",
        "dynamic": False,
    }
    assert compile_options({"enabled": False, "backend": "aot_eager"}) is None
    with pytest.raises(ValueError, match=r"train.compile has unknown key\(s\) \['backnd'\]"):
        compile_options({"backnd": "inductor"})
    with pytest.raises(ValueError, match="train.compile must be True, False or a dict, got 'yes'"):
        compile_options("yes")


def test_the_common_config_trains_eagerly_by_default() -> None:
    cfg = LazyConfig.load(str(ROOT / "configs/common/train.py"))
    assert compile_options(cfg.train.compile) is None


def train_losses(options: dict | None) -> tuple[list[dict[str, float]], torch.nn.Module]:
    """Every loss term of ``STEPS`` training steps of a small SQR Deformable-DETR (seed 0, no
    dropout, one fixed batch), and the trained model."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(CONFIG)), TINY_DEFORMABLE_DETR + SMALL)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    batch = synthetic_batch(2, 64, 80, num_classes=model.num_classes, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    trainer = Trainer(
        model, itertools.repeat(batch), optimizer, log_period=1, compile_options=options
    )
    trainer.train(0, STEPS)
    names = [n for n in trainer.storage.names() if n.startswith("loss")]
    history = {n: trainer.storage.history(n).values() for n in names}
    steps = [{n: values[i][0] for n, values in history.items()} for i in range(STEPS)]
    return steps, model


def assert_same_losses(eager: list[dict], compiled: list[dict]) -> None:
    assert len(eager) == len(compiled) == STEPS
    for step, (a, b) in enumerate(zip(eager, compiled, strict=True)):
        assert a.keys() == b.keys() and len(a) >= 6, step  # 3 terms of each of 2 stages
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), (step, name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_training_has_the_eager_losses() -> None:
    eager, eager_model = train_losses(None)
    compiled, model = train_losses({"backend": "aot_eager"})
    # Compiled in place: the same module and parameter names, so checkpoints do not change.
    assert model._compiled_call_impl is not None and eager_model._compiled_call_impl is None
    assert list(model.state_dict()) == list(eager_model.state_dict())
    assert_same_losses(eager, compiled)


@pytest.mark.inductor
@pytest.mark.timeout(1800)
@pytest.mark.skipif(shutil.which("g++") is None, reason="CPU inductor needs a C++ compiler (g++)")
def test_inductor_training_has_the_eager_losses() -> None:
    eager, _ = train_losses(None)
    compiled, _ = train_losses(compile_options(True))
    assert_same_losses(eager, compiled)
