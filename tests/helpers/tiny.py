"""Overrides that shrink the real model configs to test size (same code paths, tiny widths).

They are the package's ``--tiny`` overrides (``sqr/tools/_device_checks.py``, which the GPU
check's dry run needs in an installed package), so the tests and that dry run build the same
models: ResNet-18, 32 channels, small FFNs and 10 queries; the decoder depth stays the recipe's.
"""

from sqr.tools._device_checks import TINY

TINY_DAB_DETR = TINY["dab_detr"]
TINY_DEFORMABLE_DETR = TINY["deformable_detr"]
TINY_ADAMIXER = TINY["adamixer"]
TINY_DINO = TINY["dino"]
