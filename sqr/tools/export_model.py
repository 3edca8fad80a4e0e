r"""Export a trained detector for deployment, then check the export against eager PyTorch.

    python tools/export_model.py --config-file projects/sqr/configs/X.py --format onnx \
        --output deploy/X train.init_checkpoint=output/X/model_final.pth
    python tools/export_model.py --config-file X.py --format torch-export --output deploy/X \
        --sample-images street.jpg dog.png train.init_checkpoint=model.pth

Writes ``DIR/model.onnx`` (``--format onnx``: checked by ``onnx.checker``, run in onnxruntime on
the CPU) or ``DIR/model.pt2`` (``--format torch-export``: an ExportedProgram saved with
``torch.export.save``), atomically: an export that fails leaves an earlier file whole. The
graph's inputs and outputs are described in the README (Deploy) and :mod:`sqr.export`.

The check: the config's test transform of ``--num-images`` images of the config's test dataset
(or ``--sample-images``) goes through the exported graph and through the PyTorch model; the
detections must have the same labels, boxes within 1e-2 px and scores within 1e-4, image by
image and as one batch of all of them, padded to the largest as evaluation pads it (a graph of
fixed image size is checked on the batches of its size). Anything else fails the command (exit
status 1). SQR models export as their baselines: their evaluation is the plain decoder. The
``key=value`` config overrides come last.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence

from omegaconf import OmegaConf

from sqr.utils.cli import refuse_misplaced_flags, split_off_overrides
from sqr.utils.logger import setup_logger

__all__ = ["build_parser", "invoke_main", "main", "parse_args"]

logger = logging.getLogger("sqr.export")

FILE_NAMES = {"onnx": "model.onnx", "torch-export": "model.pt2"}


def build_parser() -> argparse.ArgumentParser:
    """The export's flags, followed by ``key=value`` config overrides (the demo's conventions:
    :func:`sqr.engine.default_argument_parser`'s training flags mean nothing here)."""
    parser = argparse.ArgumentParser(
        description="Export a trained detector to ONNX or torch.export and check it.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="the model's config: a path, or the name of one under projects/sqr/configs",
    )
    parser.add_argument("--format", choices=sorted(FILE_NAMES), default="onnx")
    parser.add_argument("--output", required=True, metavar="DIR", help="where to write")
    parser.add_argument(
        "--sample-images",
        nargs="+",
        default=None,
        metavar="IMAGE",
        help="images for the check (default: the first --num-images of the test dataset)",
    )
    parser.add_argument(
        "--num-images", type=int, default=2, metavar="N", help="test images checked (default 2)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides 'path.key=value', after all flags"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse an export command line (without the program name; default ``sys.argv[1:]``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_misplaced_flags(parser, args.opts)
    if args.sample_images is not None:
        args.sample_images, args.opts = split_off_overrides(args.sample_images, args.opts)
    if args.sample_images == []:
        parser.error("--sample-images needs at least one image file")
    return args


def _sample_images(cfg, args: argparse.Namespace) -> list[str]:
    """The check's image files: ``--sample-images``, else the test dataset's first ones."""
    if args.sample_images:
        return list(args.sample_images)
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    from sqr.data.catalog import load_dataset

    name = OmegaConf.select(cfg, "dataloader.test.dataset")
    if isinstance(name, Sequence) and not isinstance(name, str):
        name = name[0] if name else None
    if not isinstance(name, str):
        raise ValueError(
            "the config names no test dataset (dataloader.test.dataset): pass --sample-images"
        )
    try:
        records, _ = load_dataset(name)
    except (KeyError, FileNotFoundError) as e:
        raise ValueError(f"test dataset {name!r} cannot be read ({e}): pass --sample-images") from e
    return [r["file_name"] for r in records[: args.num_images]]


def main(args: argparse.Namespace):
    """Export and check (see the module docstring).

    Returns:
        ``(path of the exported file, its ExportMetadata, the Parity measured)``.

    Raises:
        sqr.export.ParityError: the exported graph disagrees with eager PyTorch.
        sqr.export.UnexportableOptionError: a model option the graph cannot reproduce.
    """
    # Imported after parsing, so that --help and argument errors come without loading torch.
    import torch

    from sqr import export
    from sqr.engine import Predictor, load_config

    cfg = load_config(args)
    # The Predictor builds the model with its trained weights (a checkpoint of another model is
    # refused) and preprocesses images for every backend (Predictor.preprocess).
    predictor = Predictor(cfg, device="cpu")
    detector = export.prepare_for_export(predictor.model)
    paths = _sample_images(cfg, args)
    inputs = [predictor.preprocess(p) for p in paths]

    images, orig_sizes, image_sizes = export.batch_for_graph(
        inputs[:1], detector.pixel_mean, detector.pixel_std
    )
    path = os.path.join(args.output, FILE_NAMES[args.format])
    start = time.perf_counter()
    write = export.export_onnx if args.format == "onnx" else export.export_program
    metadata = write(detector, images, orig_sizes, path, image_sizes)
    logger.info("Exported %s to %s in %.1f s", metadata.detector, path, time.perf_counter() - start)

    exported = export.ExportedDetector(path)
    fixed = metadata.fixed_size
    # Each image alone, then all of them as one batch padded to the largest (mixed sizes; the
    # first image twice when there is one): the batch axis and the padding mask.
    batches = [([str(p)], [x]) for p, x in zip(paths, inputs, strict=True)]
    together = inputs if len(inputs) > 1 else [inputs[0], inputs[0]]
    names = [str(p) for p in paths] if len(inputs) > 1 else [str(paths[0])] * 2
    batches.append(([f"{n} (batch of {len(together)})" for n in names], together))
    eager, ours, checked = [], [], []
    with torch.no_grad():
        for batch_names, batch in batches:
            height = max(x["image"].shape[-2] for x in batch)
            width = max(x["image"].shape[-1] for x in batch)
            if fixed is not None and (height, width) != fixed:
                logger.info("Not checked (not %d x %d): %s", *fixed, ", ".join(batch_names))
                continue
            eager.extend(detector(batch))
            ours.extend(exported(batch))
            checked.extend(batch_names)
    parity = export.compare_detections(eager, ours, checked)
    logger.info(
        "%s matches eager PyTorch on %d image(s), %d detection(s): boxes within %.2e px, "
        "scores within %.2e; image size %s, batch dynamic",
        path,
        parity.images,
        parity.detections,
        parity.max_box_diff,
        parity.max_score_diff,
        "dynamic" if fixed is None else f"fixed at {fixed[0]} x {fixed[1]}",
    )
    return path, metadata, parity


def invoke_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``tools/export_model.py`` (and of an installed ``sqr-export`` command)."""
    args = parse_args(argv)
    setup_logger()
    main(args)


if __name__ == "__main__":
    invoke_main()
