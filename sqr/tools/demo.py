r"""Run a trained detector on your own images and draw what it finds.

    python tools/demo.py --config-file projects/sqr/configs/X.py \
        --input street.jpg photos/ "shots/*.png" --output demo_out \
        train.init_checkpoint=output/X/model_final.pth
    python tools/demo.py --config-file quickstart/sqr_dab_detr_synthetic.py --input photos/ \
        --output out --confidence-threshold 0.3 --batch-size 4 --device cpu \
        train.init_checkpoint=model.pth

``--onnx model.onnx`` (written by ``sqr-export``) runs the exported graph in onnxruntime on the
CPU instead of the checkpoint, with the same detections (:class:`sqr.engine.Predictor`'s
``backend="onnxruntime"``); the config still gives the test transform and the class names.

``--input`` takes image files, directories (every .jpg, .jpeg, .png, .bmp, .tif, .tiff and .webp
directly inside, sorted by name) and globs (quoted, so that this tool expands them; ``**``
recurses; image files only, sorted). Images are decoded like training images
(:func:`sqr.data.mapper.read_image`) and preprocessed with the config's test transform by
:class:`sqr.engine.Predictor`.

Writes into ``--output``:

* one drawing per image under its file name: each detection scoring at least
  ``--confidence-threshold`` as a box in its class colour, tagged with class name and score.
  When two inputs share a file name (``a/img.png``, ``b/img.png``), the later one in input order
  becomes ``img_1.png`` (then ``img_2.png``, ...), so nothing is overwritten and reruns give the
  same names; the renames are logged. A format Pillow cannot write gets ``.png`` added.
* ``results.json``: the same detections in COCO results format, one entry per detection:
  ``{"file_name": the input path, "image_id": its index in input order, "category_id": the
  contiguous label, "category_name", "bbox": [x, y, width, height] in the image's pixels,
  "score"}``.

An image that cannot be read stops the run with an error naming it; the drawings and
``results.json`` of the images before it are kept. With ``--skip-bad-images`` it is skipped
instead, and every skipped image is named at the end.

A progress bar runs meanwhile, and the seconds per image (reading, predicting, drawing and
writing) are logged at the end. The ``key=value`` config overrides come last: ``--input`` stops
at the first item that looks like one (``dotted.key=value``) and is not an existing file.
"""

from __future__ import annotations

import argparse
import glob
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from sqr.utils.cli import refuse_misplaced_flags, split_off_overrides
from sqr.utils.file_io import write_atomically, write_json
from sqr.utils.logger import setup_logger

__all__ = ["build_parser", "collect_inputs", "invoke_main", "main", "output_names", "parse_args"]

logger = logging.getLogger("sqr.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
RESULTS_FILE = "results.json"


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags, followed by ``key=value`` config overrides.

    Not :func:`sqr.engine.default_argument_parser`: its training flags (``--resume``,
    ``--eval-only``, ``--num-gpus``, ...) mean nothing here.
    """
    parser = argparse.ArgumentParser(
        description="Draw a trained detector's detections on images.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="the model's config: a path, or the name of one under projects/sqr/configs",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        metavar="PATH",
        help="image files, directories of images, or quoted globs",
    )
    parser.add_argument("--output", metavar="DIR", help="where to write (required)")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        metavar="T",
        help="draw and write detections scoring at least this (default 0.5, as in detectron2's "
        "demo; a small model such as the quickstart's needs a lower one, e.g. 0.3)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, metavar="N", help="images per forward pass"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: the config's train.device)"
    )
    parser.add_argument(
        "--onnx",
        default=None,
        metavar="FILE",
        help="run this model.onnx from sqr-export in onnxruntime (CPU) instead of the checkpoint",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip images that cannot be read, name them at the end, and go on (default: stop at "
        "the first, keeping the drawings and results.json of the images before it)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides 'path.key=value', after all flags"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a demo command line (without the program name; default ``sys.argv[1:]``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Checked before the required flags: a misplaced --input would otherwise be reported as
    # missing.
    refuse_misplaced_flags(parser, args.opts)
    args.input, args.opts = split_off_overrides(args.input, args.opts)
    if not args.input:
        parser.error("--input needs at least one image file, directory or glob")
    if not args.output:
        parser.error("--output DIR is required")
    return args


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def collect_inputs(items: Sequence[str]) -> list[Path]:
    """The image files that ``--input`` names, in order, each once.

    Args:
        items: files (any extension: they were asked for), directories (the image files directly
            inside, sorted) and globs (the image files they match, sorted).

    Returns:
        The paths; a file reached twice (say by a directory and a glob) keeps its first place.

    Raises:
        FileNotFoundError: an item that yields no image file, named.
    """
    found: dict[Path, Path] = {}  # resolved -> as given
    for item in items:
        path = Path(item)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if _is_image(p))
        else:
            matches = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if _is_image(p))
        if not matches:
            kind = "directory" if path.is_dir() else "file, directory or glob"
            raise FileNotFoundError(
                f"--input {item!r}: no image file in this {kind} (image files end in "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        for match in matches:
            found.setdefault(match.resolve(), match)
    return list(found.values())


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct output file name per input: its own name, or ``<stem>_<k><suffix>`` with the
    smallest ``k >= 1`` that is free when an earlier input took it.

    Names are compared case-insensitively, as on macOS and Windows file systems. An input whose
    extension Pillow cannot write (a file given by name, say ``scan.psd``) gets ``.png`` added,
    so every name ends in an image extension and none is ``results.json``.
    """
    taken: set[str] = set()
    names = []
    for path in paths:
        stem, suffix = path.stem, path.suffix
        if Image.registered_extensions().get(suffix.lower()) not in Image.SAVE:
            stem, suffix = path.name, ".png"
        name, k = stem + suffix, 0
        while name.lower() in taken:
            k += 1
            name = f"{stem}_{k}{suffix}"
        if k:
            logger.info("%s is written as %s: an earlier input has its name", path, name)
        taken.add(name.lower())
        names.append(name)
    return names


def coco_results(image_id: int, file_name: str, prediction: dict[str, Any]) -> list[dict[str, Any]]:
    """One image's detections as COCO result dicts (see the module docstring).

    Args:
        image_id: The image's index in input order.
        file_name: The input path.
        prediction: ``boxes`` Tensor[N, 4] XYXY, ``scores`` [N], ``labels`` [N] and
            ``class_names`` (N names), as :class:`sqr.engine.Predictor` returns.
    """
    xywh = prediction["boxes"].clone()
    xywh[:, 2:] -= xywh[:, :2]
    return [
        {
            "file_name": file_name,
            "image_id": image_id,
            "category_id": label,
            "category_name": name,
            "bbox": box,
            "score": score,
        }
        for box, score, label, name in zip(
            xywh.tolist(),
            prediction["scores"].tolist(),
            prediction["labels"].tolist(),
            prediction["class_names"],
            strict=True,
        )
    ]


def _above(prediction: dict[str, Any], threshold: float) -> dict[str, Any]:
    keep = prediction["scores"] >= threshold
    names = [n for n, k in zip(prediction["class_names"], keep.tolist(), strict=True) if k]
    return {
        "boxes": prediction["boxes"][keep],
        "scores": prediction["scores"][keep],
        "labels": prediction["labels"][keep],
        "class_names": names,
    }


def _save(image: Image.Image, path: Path) -> None:
    # Atomic like every other output; the format follows the extension, which a temporary
    # file name does not end in. JPEG and WebP get a higher quality than Pillow's default.
    image_format = Image.registered_extensions()[path.suffix.lower()]
    write_atomically(str(path), lambda f: image.save(f, format=image_format, quality=95))


def main(args: argparse.Namespace) -> float:
    """Run the demo (see the module docstring).

    Returns:
        Seconds per image over the whole loop: reading, predicting, drawing and writing.

    Raises:
        ValueError: a bad flag value, or an output that would overwrite an input.
        FileNotFoundError: an ``--input`` item that yields no image.
        sqr.data.mapper.ImageReadError: an image that cannot be read, named (not with
            ``--skip-bad-images``); ``results.json`` then holds the images before it.
    """
    # Imported here, not at the top, so that --help answers without loading torch.
    from sqr.data.mapper import ImageReadError, read_image
    from sqr.engine import Predictor, load_config
    from sqr.utils.visualizer import draw_detections

    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(
            f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}"
        )
    paths = collect_inputs(args.input)
    output_dir = Path(args.output)
    outputs = [output_dir / name for name in output_names(paths)]
    inputs = {p.resolve() for p in paths}
    for path, out in zip(paths, outputs, strict=True):
        if out.resolve() in inputs:
            raise ValueError(
                f"--output {args.output!r}: the drawing of {path} would overwrite the input "
                f"{out}; choose another output directory"
            )
    cfg = load_config(args)  # --config-file may also be a config name, as for every tool
    if args.onnx:  # the config still gives the test transform and the class names
        predictor = Predictor(cfg, args.onnx, batch_size=args.batch_size, backend="onnxruntime")
    else:
        predictor = Predictor(cfg, device=args.device, batch_size=args.batch_size)
    output_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    failure: ImageReadError | None = None
    start = time.perf_counter()
    with tqdm(total=len(paths), desc="demo", unit="img", dynamic_ncols=True) as bar:
        for first in range(0, len(paths), args.batch_size):
            batch, arrays = [], []
            for i in range(first, min(first + args.batch_size, len(paths))):
                try:
                    # Decoded once: the same H x W x 3 RGB array is predicted on and drawn on.
                    arrays.append(read_image(str(paths[i])).permute(1, 2, 0).contiguous().numpy())
                except ImageReadError as e:
                    if not args.skip_bad_images:
                        failure = e
                        break
                    logger.warning("Skipping %s: %s", paths[i], e)
                    skipped.append(f"{paths[i]} ({e})")
                    continue
                batch.append(i)
            predictions = predictor(arrays) if arrays else []
            for i, array, prediction in zip(batch, arrays, predictions, strict=True):
                kept = _above(prediction, args.confidence_threshold)
                drawing = draw_detections(
                    Image.fromarray(array),
                    kept["boxes"],
                    kept["scores"],
                    kept["labels"],
                    kept["class_names"],
                )
                _save(drawing, outputs[i])
                results.extend(coco_results(i, str(paths[i]), kept))
            bar.update(len(batch))
            if failure is not None:
                break
    # Written in every case: what was drawn before a failure is kept.
    write_json(str(output_dir / RESULTS_FILE), results)
    if failure is not None:
        raise ImageReadError(
            f"{failure}. Stopped there: {output_dir / RESULTS_FILE} holds the images before it; "
            "pass --skip-bad-images to skip unreadable images and go on"
        ) from failure
    if skipped:
        logger.warning("Skipped %d unreadable image(s): %s", len(skipped), "; ".join(skipped))
    drawn = len(paths) - len(skipped)
    seconds_per_image = (time.perf_counter() - start) / max(drawn, 1)
    logger.info(
        "Drew %d detection(s) on %d image(s) into %s: %.4f s/img on %s",
        len(results),
        drawn,
        output_dir,
        seconds_per_image,
        predictor.device,
    )
    return seconds_per_image


def invoke_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``tools/demo.py`` (and of an installed ``sqr-demo`` command)."""
    args = parse_args(argv)
    setup_logger()
    main(args)


if __name__ == "__main__":
    invoke_main()
