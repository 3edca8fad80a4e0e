"""Draw labelled detection boxes on an image with PIL (fast, no matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "class_colour", "draw_detections"]

#: matplotlib's "tab10" colours as RGB; class ``k`` gets ``PALETTE[k % 10]``.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of a contiguous class id: the same in every image and every run."""
    return PALETTE[label % len(PALETTE)]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    # Black on light backgrounds, white on dark ones (ITU-R BT.601 luma).
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw_detections(
    image: Image.Image,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
) -> Image.Image:
    """Draw each detection as a box outline with a ``"<name> <score>"`` tag in its class colour.

    Higher scores are drawn last, so their tags stay readable where detections overlap. Line
    width and font size grow with the image, so drawings look alike at any resolution.

    Args:
        image: The image the boxes refer to (any mode; drawn on an RGB copy).
        boxes: Tensor[N, 4] XYXY in ``image``'s pixels.
        scores: Tensor[N].
        labels: Tensor[N] contiguous class ids (they pick the colours).
        names: N class names, one per detection.

    Returns:
        A new RGB image; ``image`` is not modified.
    """
    if not len(boxes) == len(scores) == len(labels) == len(names):
        raise ValueError(
            "draw_detections needs one score, label and name per box, got "
            f"{len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels, {len(names)} names"
        )
    canvas = image.convert("RGB")  # always a copy
    draw = ImageDraw.Draw(canvas)
    longest = max(canvas.size)
    line_width = max(1, round(longest / 200))
    font = ImageFont.load_default(size=max(10, round(longest / 50)))
    for i in scores.argsort().tolist():
        x0, y0, x1, y1 = boxes[i].tolist()
        # Pillow refuses a rectangle whose corners are out of order.
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        colour = class_colour(int(labels[i]))
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line_width)
        text = f"{names[i]} {float(scores[i]):.2f}"
        # No text anchors: Pillow supports them only for TrueType fonts, and without FreeType
        # load_default() gives a bitmap font.
        _, _, width, height = draw.textbbox((0, 0), text, font=font)
        # The tag sits above the box, or just inside it when the box touches the top edge.
        top = y0 - height if y0 - height >= 0 else y0
        draw.rectangle((x0, top, x0 + width, top + height), fill=colour)
        draw.text((x0, top), text, fill=_text_colour(colour), font=font)
    return canvas
