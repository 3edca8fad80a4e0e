"""The pieces every tool shares: command-line parser, config loading, launch and per-run setup."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from sqr.config import LazyConfig
from sqr.utils import comm
from sqr.utils.env import collect_env_info, seed_all_rng
from sqr.utils.logger import setup_logger

from .launch import launch

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """Rejects ``--flags`` that ended up among the overrides (argparse REMAINDER swallows them)."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        parsed = super().parse_args(args, namespace)
        misplaced = [opt for opt in parsed.opts if opt.startswith("--")]
        if misplaced:
            self.error(
                f"flag(s) {' '.join(misplaced)} came after the config overrides; put every --flag "
                "before the first key=value override"
            )
        return parsed


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's training flags, followed by ``key=value`` config overrides."""
    parser = _Parser(
        epilog=epilog
        or (
            "Examples:\n"
            "  tools/train_net.py --config-file cfg.py --num-gpus 8\n"
            "  tools/train_net.py --config-file cfg.py --eval-only train.init_checkpoint=m.pth\n"
            "  tools/train_net.py --config-file cfg.py --num-gpus 2 train.device=cpu"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from output_dir/last_checkpoint if it exists (model, optimizer, scheduler, "
        "iteration, RNG); otherwise start fresh from train.init_checkpoint",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate only")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous URL, tcp://host:port (auto: a free port on this machine)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides 'path.key=value', after all flags",
    )
    return parser


def default_setup(cfg: DictConfig, args: argparse.Namespace) -> None:
    """Output directory, logging, environment report, ``config.yaml`` and seeding.

    Args:
        cfg: the full config (``cfg.train.output_dir``, ``cfg.train.seed`` are read).
        args: parsed command line.
    """
    output_dir = cfg.train.output_dir
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, rank)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Command line: %s", " ".join(sys.argv))
    logger.info("Arguments: %s", args)
    if getattr(args, "config_file", ""):
        with open(args.config_file, encoding="utf-8") as f:
            logger.info("Contents of %s:\n%s", args.config_file, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        LazyConfig.save(cfg, path)
        logger.info("Full config saved to %s", path)
    seed = cfg.train.get("seed", -1)
    # Each rank draws a different stream; the data pipeline seeds every sample from train.seed.
    used = seed_all_rng(None if seed is None or seed < 0 else seed + rank)
    logger.info("Using seed %d for rank %d", used, rank)
    torch.backends.cudnn.benchmark = bool(cfg.train.get("cudnn_benchmark", False))


def resolve_device(name: str) -> str:
    """``train.device`` as a torch device name: "auto" is "cuda" when CUDA is visible, else
    "cpu"; any other name is kept."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_config(args: argparse.Namespace) -> DictConfig:
    """``--config-file`` with the command line's overrides applied and ``train.device``
    resolved (:func:`resolve_device`)."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    cfg.train.device = resolve_device(cfg.train.device)
    return cfg


def launch_main(main_func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """Run ``main_func(args)`` on every process the command line asks for (``--num-gpus``,
    ``--num-machines``, ``--machine-rank``, ``--dist-url``), with the config's device and
    collective timeout (``train.dist_timeout_minutes``, 30 by default)."""
    cfg = load_config(args)
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=cfg.train.device,
        timeout=datetime.timedelta(minutes=cfg.train.get("dist_timeout_minutes", 30)),
    )
