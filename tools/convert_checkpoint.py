#!/usr/bin/env python
"""Convert a checkpoint from another codebase to sqr's parameter names.

    python tools/convert_checkpoint.py --format detrex_dab_detr dab_detr_r50_50ep.pth out.pth
    python tools/convert_checkpoint.py --format auto sqr://dab_detr_r50_50ep out.pth
    python tools/convert_checkpoint.py --format detectron2_resnet \
        detectron2://ImageNetPretrained/torchvision/R-50.pkl r50.pth

INPUT is a file or anything :func:`sqr.engine.model_zoo.resolve` accepts (``sqr://NAME``,
``detectron2://...``, ``https://...``). It is read without unpickling arbitrary objects. OUTPUT is
``{"model": converted, "__converted_from__": FORMAT, "__source__": INPUT}``, written to a temporary
file and renamed, so an existing OUTPUT is left untouched when anything fails.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sqr.engine.checkpoint import load_checkpoint_file
from sqr.engine.model_zoo import resolve
from sqr.modeling.converters import CONVERTERS, ConversionError, convert


def detect_format(state: Mapping[str, Any]) -> str:
    """Guess the format of a state_dict from its key names.

    Args:
        state: The checkpoint's ``"model"`` entry.

    Returns:
        ``"detrex_dab_detr"`` when keys start with ``transformer.``, ``"detectron2_resnet"`` when
        they start with ``stem.`` or ``res2.``.

    Raises:
        ValueError: Neither or both patterns are present.
    """
    found = []
    if any(key.startswith("transformer.") for key in state):
        found.append("detrex_dab_detr")
    if any(key.startswith(("stem.", "res2.")) for key in state):
        found.append("detectron2_resnet")
    if len(found) == 1:
        return found[0]
    sample = ", ".join(list(state)[:5])
    what = "matches several formats (" + ", ".join(found) + ")" if found else "matches no format"
    raise ValueError(
        f"--format auto: the checkpoint {what}; first keys: {sample}. "
        f"Pass one of --format {', '.join(sorted(CONVERTERS))}"
    )


def save_atomically(data: dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a checkpoint to sqr parameter names.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=["auto", *sorted(CONVERTERS)],
        help="source format; 'auto' guesses it from the key names",
    )
    parser.add_argument("input", help="file, sqr://NAME, detectron2://PATH or https:// URL")
    parser.add_argument("output", help="where to write the converted .pth")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter.

    Args:
        argv: Command-line arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 1 when the input cannot be read or converted (the reason goes to stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        data = load_checkpoint_file(resolve(args.input))
        state = data["model"]
        if not isinstance(state, Mapping):
            raise ValueError(f"{args.input}: 'model' is a {type(state).__name__}, not a dict")
        fmt = detect_format(state) if args.format == "auto" else args.format
        converted = convert(state, fmt)
        save_atomically(
            {"model": converted, "__converted_from__": fmt, "__source__": args.input}, args.output
        )
    except (ConversionError, ValueError, OSError, RuntimeError, pickle.UnpicklingError) as e:
        # RuntimeError covers DownloadError and torch.load failures, UnpicklingError unsafe files.
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1
    print(
        f"Converted {len(state)} keys from {fmt} to {len(converted)} keys "
        f"({len(state) - len(converted)} dropped); wrote {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
