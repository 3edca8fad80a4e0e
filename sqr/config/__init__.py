"""Config system: detectron2-format LazyConfig files, overrides and instantiation."""

from pathlib import Path

from .instantiate import instantiate, locate
from .lazy import LazyCall, LazyConfig

L = LazyCall

# Shared defaults ("common/train.py", ...): the repo's configs/ in a source checkout, or the copy
# that setup.py ships inside the package for a regular install.
_CONFIG_ROOTS = (
    Path(__file__).resolve().parents[2] / "configs",
    Path(__file__).resolve().parent / "configs",
)


def get_config(config_path: str):
    """Load one of the shared config files by its path under ``configs/``.

    Args:
        config_path: e.g. ``"common/train.py"``.

    Returns:
        The loaded ``DictConfig`` (a fresh copy on every call).
    """
    for root in _CONFIG_ROOTS:
        candidate = root / config_path
        if candidate.is_file():
            return LazyConfig.load(str(candidate))
    searched = ", ".join(str(r) for r in _CONFIG_ROOTS)
    raise FileNotFoundError(f"shared config '{config_path}' not found under: {searched}")


__all__ = ["L", "LazyCall", "LazyConfig", "get_config", "instantiate", "locate"]
