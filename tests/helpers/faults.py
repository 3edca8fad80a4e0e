"""Multi-process workers that inject faults into a stand-in training run."""

from __future__ import annotations

from pathlib import Path

from helpers.standin import StandInDetector
from helpers.train_net import load_train_net, parse
from sqr.config import instantiate
from sqr.utils import comm


def train_with_nan_on_rank_1(argv: list[str], out_dir: str) -> None:
    """Train; from iteration 2 on, rank 1 alone has a NaN loss. Write the error each rank saw."""
    original = StandInDetector.losses
    calls = {"n": 0}

    def losses(self, *args):
        result = original(self, *args)
        calls["n"] += 1
        if comm.get_rank() == 1 and calls["n"] > 2:
            result["loss_box"] = result["loss_box"] * float("nan")
        return result

    StandInDetector.losses = losses
    train_net = load_train_net()
    args = parse(*argv)
    cfg = train_net.setup(args)
    model = instantiate(cfg.model).to(cfg.train.device)
    try:
        train_net.do_train(cfg, args, model)
        message = "finished"
    except FloatingPointError as e:
        message = str(e)
    Path(out_dir, f"rank{comm.get_rank()}.txt").write_text(message)


def resume_where_rank_1_sees_no_checkpoint(argv: list[str], out_dir: str, readable: bool) -> None:
    """Resume a run; rank 1 sees no last_checkpoint, and with ``readable=False`` it cannot
    read the file rank 0 picks either. Write what each rank did."""
    import os

    from sqr.engine import DetectionCheckpointer

    if comm.get_rank() == 1:
        DetectionCheckpointer.has_checkpoint = lambda self: False
        if not readable:
            isfile = os.path.isfile
            os.path.isfile = lambda p: False if str(p).endswith(".pth") else isfile(p)
    train_net = load_train_net()
    args = parse(*argv)
    cfg = train_net.setup(args)
    model = instantiate(cfg.model).to(cfg.train.device)
    try:
        train_net.do_train(cfg, args, model)
        message = "finished"
    except FileNotFoundError as e:
        message = str(e)
    Path(out_dir, f"resume_rank{comm.get_rank()}.txt").write_text(message)
