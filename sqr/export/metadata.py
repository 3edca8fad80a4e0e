"""What an exported graph records about itself, so that it runs without the PyTorch model.

Stored as one JSON string: under :data:`METADATA_KEY` in an ONNX model's ``metadata_props``, and
as the extra file :data:`METADATA_KEY` of a ``torch.export`` archive.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["METADATA_KEY", "ExportMetadata"]

METADATA_KEY = "sqr_export"


@dataclass(frozen=True)
class ExportMetadata:
    """How to feed an exported detector.

    Attributes:
        detector: the detector's class name (an SQR model exports as its baseline).
        exporter: ``"torchscript"`` or ``"dynamo"`` (ONNX), ``"torch.export"`` (ExportedProgram).
        pixel_mean, pixel_std: the RGB normalisation of the graph's input (0-255 scale).
        num_classes: labels are ``0 .. num_classes - 1``.
        fixed_size: (height, width) every padded batch must have, or None when the image size
            is a dynamic axis. The batch axis is always dynamic.
    """

    detector: str
    exporter: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    num_classes: int
    fixed_size: tuple[int, int] | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportMetadata:
        """Parse :meth:`to_json`'s output; ``source`` names the file in errors."""
        try:
            fields = json.loads(text)
            fixed = fields["fixed_size"]
            return cls(
                detector=str(fields["detector"]),
                exporter=str(fields["exporter"]),
                pixel_mean=tuple(float(v) for v in fields["pixel_mean"]),
                pixel_std=tuple(float(v) for v in fields["pixel_std"]),
                num_classes=int(fields["num_classes"]),
                fixed_size=None if fixed is None else (int(fixed[0]), int(fixed[1])),
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{source}: unreadable {METADATA_KEY!r} metadata: {e}") from None
