"""detectron2's command line: flags, then ``key=value`` config overrides.

Kept apart from :mod:`sqr.engine.defaults` (which re-exports it) and free of torch, so that a
command parses its arguments, and answers ``--help``, before it imports anything heavy.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

__all__ = ["default_argument_parser", "refuse_misplaced_flags", "split_off_overrides"]

_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")


def refuse_misplaced_flags(parser: argparse.ArgumentParser, opts: Sequence[str]) -> None:
    """Exit through ``parser.error`` when ``--flags`` ended up among the ``key=value`` overrides
    (argparse's REMAINDER swallows everything after the first override)."""
    misplaced = [opt for opt in opts if opt.startswith("--")]
    if misplaced:
        parser.error(
            f"flag(s) {' '.join(misplaced)} came after the config overrides; put every --flag "
            "before the first key=value override"
        )


def split_off_overrides(words: Sequence[str], opts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Give back to the overrides what a ``nargs="+"`` flag took from them.

    A flag such as ``--input a.jpg b.jpg`` takes every following word, the first ``key=value``
    override included; from the first word that looks like one (and is not an existing file),
    the rest are overrides.

    Returns:
        The flag's own words and the overrides.
    """
    for i, word in enumerate(words):
        if _OVERRIDE.match(word) and not os.path.exists(word):
            return list(words[:i]), [*words[i:], *opts]
    return list(words), list(opts)


class _Parser(argparse.ArgumentParser):
    """Rejects ``--flags`` that ended up among the overrides (argparse REMAINDER swallows them).

    ``--config-file`` is required here rather than by argparse: written after an override it
    lands among the overrides, and argparse would report it missing.
    """

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        parsed = super().parse_args(args, namespace)
        refuse_misplaced_flags(self, parsed.opts)
        if parsed.config_file is None:
            self.error("the following arguments are required: --config-file")
        return parsed


def default_argument_parser(
    epilog: str | None = None, *, training: bool = True, distributed: bool = True
) -> argparse.ArgumentParser:
    """detectron2's flags, followed by ``key=value`` config overrides.

    Args:
        epilog: text after the flags in ``--help``.
        training: offer ``--resume`` and ``--eval-only`` (train_net only).
        distributed: offer ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``
            (tools that launch several processes).
    """
    parser = _Parser(
        epilog=epilog
        or (
            "Examples:\n"
            "  sqr-train --config-file cfg.py --num-gpus 8\n"
            "  sqr-train --config-file cfg.py --eval-only train.init_checkpoint=m.pth\n"
            "  sqr-train --config-file cfg.py --num-gpus 2 train.device=cpu\n"
            "(sqr-train is tools/train_net.py in a checkout)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help="(required) path to a config file, or the name of one under projects/sqr/configs "
        "(e.g. sqr_dab_detr_r50_50ep.py, quickstart/sqr_dab_detr_synthetic.py)",
    )
    if training:
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue from output_dir/last_checkpoint if it exists (model, optimizer, "
            "scheduler, iteration, RNG); otherwise start fresh from train.init_checkpoint",
        )
        parser.add_argument("--eval-only", action="store_true", help="evaluate only")
    if distributed:
        parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
        parser.add_argument("--num-machines", type=int, default=1, help="machines in the job")
        parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
        parser.add_argument(
            "--dist-url",
            default="auto",
            help="rendezvous URL, tcp://host:port (auto: a free port on this machine)",
        )
        parser.add_argument(
            "--allow-oversubscribe",
            action="store_true",
            help="with train.device=cpu, allow more processes than this machine has cores",
        )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides 'path.key=value', after all flags",
    )
    return parser
