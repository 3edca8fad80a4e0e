"""Access to :mod:`sqr.tools.train_net` (tools/train_net.py's code) from tests and workers."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[2]
STANDIN_CONFIG = str(REPO / "tests" / "configs" / "standin_synthetic.py")


def load_train_net() -> ModuleType:
    from sqr.tools import train_net

    return train_net


def parse(*argv: str):
    """Parse a train_net command line (without the program name)."""
    from sqr.engine import default_argument_parser

    return default_argument_parser().parse_args(list(argv))


def run_standin(train_net: ModuleType, out: Path, *overrides: str, flags: tuple[str, ...] = ()):
    """``train_net.main`` on the stand-in config with output in ``out``; returns its result."""
    args = parse("--config-file", STANDIN_CONFIG, *flags, f"train.output_dir={out}", *overrides)
    return train_net.main(args)


def train_and_dump(argv: list[str], dump_dir: str) -> None:
    """Per-process worker: train like tools/train_net.py, then save this rank's parameters."""
    from sqr.config import instantiate
    from sqr.utils import comm

    train_net = load_train_net()
    args = parse(*argv)
    cfg = train_net.setup(args)
    model = instantiate(cfg.model).to(cfg.train.device)
    train_net.do_train(cfg, args, model)
    torch.save(model.state_dict(), Path(dump_dir) / f"rank{comm.get_rank()}.pt")
