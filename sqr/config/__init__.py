"""Config system: detectron2-format LazyConfig files, overrides and instantiation."""

import difflib
from pathlib import Path, PurePosixPath

from .instantiate import instantiate, locate
from .lazy import LazyCall, LazyConfig

L = LazyCall

# Config files sit at the same relative paths under two roots: a source checkout (edits there
# take effect without reinstalling), then the copy that setup.py ships inside the package for a
# regular install.
_ROOTS = (Path(__file__).resolve().parents[2], Path(__file__).resolve().parent)
# Shared defaults ("common/train.py", ...).
_CONFIG_ROOTS = tuple(root / "configs" for root in _ROOTS)
# Experiment configs ("sqr_dab_detr_r50_50ep.py", "quickstart/...", "models/...", ...).
_EXPERIMENT_PREFIX = PurePosixPath("projects", "sqr", "configs")
EXPERIMENT_CONFIG_ROOTS = tuple(root / _EXPERIMENT_PREFIX for root in _ROOTS)


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


def experiment_config_names() -> list[str]:
    """Every name that :func:`experiment_config_file` accepts, sorted.

    Returns:
        Paths relative to :data:`EXPERIMENT_CONFIG_ROOTS` with ``/`` separators, e.g.
        ``"quickstart/sqr_dab_detr_synthetic.py"``.
    """
    return sorted(
        {
            path.relative_to(root).as_posix()
            for root in EXPERIMENT_CONFIG_ROOTS
            for path in root.rglob("*.py")
        }
    )


def experiment_config_file(name: str) -> str:
    """The file of an experiment config, looked up by name in :data:`EXPERIMENT_CONFIG_ROOTS`.

    Args:
        name: the path relative to ``projects/sqr/configs/``, e.g. ``"sqr_dab_detr_r50_50ep.py"``
            or ``"quickstart/sqr_dab_detr_synthetic.py"``; a leading ``projects/sqr/configs/``
            is accepted too, so the README's paths work outside a checkout.

    Returns:
        The absolute path of the file.

    Raises:
        FileNotFoundError: no such config; the message names where it looked and close matches.
    """
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.parts[: len(_EXPERIMENT_PREFIX.parts)] == _EXPERIMENT_PREFIX.parts:
        relative = PurePosixPath(*relative.parts[len(_EXPERIMENT_PREFIX.parts) :])
    # Only names inside the roots: "/abs/x.py" or "../x.py" would escape them.
    if relative.parts and not relative.is_absolute() and ".." not in relative.parts:
        for root in EXPERIMENT_CONFIG_ROOTS:
            candidate = root / relative
            if candidate.is_file():
                return str(candidate)
    names = experiment_config_names()
    # A config given by its file name alone ("sqr_dab_detr_synthetic.py") matches on the last part.
    same_file = [n for n in names if PurePosixPath(n).name == relative.name]
    close = same_file + [
        n for n in difflib.get_close_matches(str(relative), names, n=5) if n not in same_file
    ]
    searched = ", ".join(str(r) for r in EXPERIMENT_CONFIG_ROOTS)
    hint = (
        f"; close matches: {', '.join(close)}"
        if close
        else f"; no close match among the {len(names)} configs there"
    )
    raise FileNotFoundError(f"experiment config {name!r} not found under: {searched}{hint}")


__all__ = [
    "EXPERIMENT_CONFIG_ROOTS",
    "L",
    "LazyCall",
    "LazyConfig",
    "experiment_config_file",
    "experiment_config_names",
    "get_config",
    "instantiate",
    "locate",
]
