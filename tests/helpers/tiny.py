"""The tiny overrides of :mod:`sqr.modeling.table`, by family, for tests that build one
detector family by hand (the contract tests in tests/contract/ read the table itself)."""

from sqr.modeling.table import TINY_ADAMIXER as _ADAMIXER
from sqr.modeling.table import TINY_DAB_DETR as _DAB_DETR
from sqr.modeling.table import TINY_DEFORMABLE_DETR as _DEFORMABLE_DETR
from sqr.modeling.table import TINY_DINO as _DINO

# Lists: callers splice them and pass them to LazyConfig.apply_overrides.
TINY_DAB_DETR = list(_DAB_DETR)
TINY_DEFORMABLE_DETR = list(_DEFORMABLE_DETR)
TINY_ADAMIXER = list(_ADAMIXER)
TINY_DINO = list(_DINO)
