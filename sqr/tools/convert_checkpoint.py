"""Convert a checkpoint from another codebase to sqr's parameter names.

    python tools/convert_checkpoint.py --format detrex_dab_detr dab_detr_r50_50ep.pth out.pth
    python tools/convert_checkpoint.py --format auto sqr://dab_detr_r50_50ep out.pth
    python tools/convert_checkpoint.py --format detectron2_resnet \
        detectron2://ImageNetPretrained/torchvision/R-50.pkl r50.pth

INPUT is a file or anything :func:`sqr.model_zoo.resolve` accepts (``sqr://NAME``,
``detectron2://...``, ``https://...``). It is read without unpickling arbitrary objects. OUTPUT is
``{"model": converted, "__converted_from__": FORMAT, "__source__": INPUT}``, written to a temporary
file and renamed, so an existing OUTPUT is left untouched when anything fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

#: The keys of :data:`sqr.modeling.converters.CONVERTERS`, spelled out so that ``--help`` does not
#: import torch (a test keeps the two equal).
FORMATS = (
    "detectron2_resnet",
    "detrex_dab_detr",
    "detrex_deformable_detr",
    "detrex_deformable_detr_refine",
    "detrex_dino",
    "mmdet_adamixer",
    "mmdet_deformable_detr",
    "mmdet_deformable_detr_refine",
    "rtdetr_presnet",
    "rtdetrv2",
    "sqr_legacy",
    "torchvision_resnet",
)


def resolve_format(state: Mapping[str, Any], fmt: str) -> str:
    """``fmt``, or the detected format for ``auto`` (an error when nothing is recognised)."""
    from sqr.modeling.converters import CONVERTERS, detect_format, is_native

    if fmt != "auto":
        return fmt
    if is_native(state):
        raise ValueError(
            "--format auto: the checkpoint already has sqr's parameter names; nothing to "
            "convert. Load it directly (train.init_checkpoint=... or --resume)"
        )
    detected = detect_format(state)
    if detected is None:
        sample = ", ".join(list(state)[:5])
        raise ValueError(
            f"--format auto: the checkpoint matches no known format; first keys: {sample}. "
            f"Pass one of --format {', '.join(sorted(CONVERTERS))}"
        )
    return detected


def check_not_input(input_ref: str, output: str) -> None:
    """Refuse an ``output`` that is the input file (same path, or another name of it)."""
    if not os.path.exists(output) or not os.path.exists(input_ref):
        return  # a new output file, or an input that is a URL or zoo name
    if os.path.realpath(output) == os.path.realpath(input_ref) or os.path.samefile(
        output, input_ref
    ):
        raise ValueError(
            f"output {output} is the input file {input_ref}; converting would overwrite it. "
            "Give another output path"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a checkpoint to sqr parameter names.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=["auto", *FORMATS],
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
    # Imported after parsing, so that --help answers without loading torch.
    import pickle

    import torch

    from sqr.engine.checkpoint import load_checkpoint_file, write_atomically
    from sqr.model_zoo import resolve
    from sqr.modeling.converters import ConversionError, convert

    try:
        check_not_input(args.input, args.output)
        data = load_checkpoint_file(resolve(args.input))
        state = data["model"]
        if not isinstance(state, Mapping):
            raise ValueError(f"{args.input}: 'model' is a {type(state).__name__}, not a dict")
        if not state:
            raise ValueError(
                f"{args.input}: no parameters to convert as {args.format} (its 'model' is empty)"
            )
        fmt = resolve_format(state, args.format)
        converted = convert(state, fmt)
        if not converted:
            raise ValueError(
                f"{args.input}: no parameters to convert as {fmt}: the converter kept none of "
                f"its {len(state)} keys"
            )
        record = {"model": converted, "__converted_from__": fmt, "__source__": args.input}
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        write_atomically(args.output, lambda f: torch.save(record, f))
    except (ConversionError, ValueError, OSError, RuntimeError, pickle.UnpicklingError) as e:
        # RuntimeError covers DownloadError and torch.load failures, UnpicklingError unsafe files.
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1
    print(
        f"Converted {len(state)} keys from {fmt} to {len(converted)} keys "
        f"({len(state) - len(converted)} dropped); wrote {args.output}"
    )
    return 0


def invoke_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    invoke_main()
