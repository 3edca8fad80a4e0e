"""Config system: detectron2-format LazyConfig files, overrides and instantiation.

Configs are loaded by name with :func:`sqr.model_zoo.get_config`; this package holds the lookup
behind it (:func:`find_config_file`) because ``setup.py`` ships the config files inside it.
"""

import difflib
from pathlib import Path, PurePosixPath

from .instantiate import instantiate, locate
from .lazy import LazyCall, LazyConfig

L = LazyCall

# Config files sit at the same relative paths under two roots: a source checkout (edits there
# take effect without reinstalling), then the copy that setup.py ships inside the package for a
# regular install.
_ROOTS = (Path(__file__).resolve().parents[2], Path(__file__).resolve().parent)
# Shared parts ("common/train.py", "common/data/coco_detr.py", ...): a name is one when its first
# folder is SHARED_FOLDER. Every other name is an experiment config ("sqr_dab_detr_r50_50ep.py",
# "quickstart/...", "models/...").
SHARED_FOLDER = "common"
_SHARED_PREFIX = PurePosixPath("configs")
SHARED_CONFIG_ROOTS = tuple(root / _SHARED_PREFIX for root in _ROOTS)
_EXPERIMENT_PREFIX = PurePosixPath("projects", "sqr", "configs")
EXPERIMENT_CONFIG_ROOTS = tuple(root / _EXPERIMENT_PREFIX for root in _ROOTS)


def _names(roots: tuple[Path, ...]) -> list[str]:
    return sorted({p.relative_to(r).as_posix() for r in roots for p in r.rglob("*.py")})


def experiment_config_names() -> list[str]:
    """Every experiment config name, sorted: paths under ``projects/sqr/configs/`` with ``/``."""
    return _names(EXPERIMENT_CONFIG_ROOTS)


def shared_config_names() -> list[str]:
    """Every shared config name, sorted: paths under ``configs/``, all in ``common/``."""
    return [n for n in _names(SHARED_CONFIG_ROOTS) if n.split("/")[0] == SHARED_FOLDER]


def find_config_file(name: str) -> str:
    """The file of a config, looked up by name: the lookup behind ``sqr.model_zoo.get_config``.

    A name whose first folder is ``common/`` (:data:`SHARED_FOLDER`) is a shared config under
    ``configs/`` (:data:`SHARED_CONFIG_ROOTS`); any other name is an experiment config under
    ``projects/sqr/configs/`` (:data:`EXPERIMENT_CONFIG_ROOTS`). The two never overlap, as
    ``projects/sqr/configs/`` has no ``common/`` folder. A leading ``configs/`` or
    ``projects/sqr/configs/`` is accepted too, so the repository's paths work outside a checkout.

    Args:
        name: e.g. ``"common/train.py"``, ``"sqr_dab_detr_r50_50ep.py"`` or
            ``"quickstart/sqr_dab_detr_synthetic.py"``.

    Returns:
        The absolute path of the file, in the checkout or else in the installed package.

    Raises:
        FileNotFoundError: no such config; the message names it, where it looked and close
            matches among the names of both kinds.
    """
    relative = PurePosixPath(name.replace("\\", "/"))
    for prefix in (_EXPERIMENT_PREFIX, _SHARED_PREFIX):
        if relative.parts[: len(prefix.parts)] == prefix.parts:
            relative = PurePosixPath(*relative.parts[len(prefix.parts) :])
            break
    shared = relative.parts[:1] == (SHARED_FOLDER,)
    roots = SHARED_CONFIG_ROOTS if shared else EXPERIMENT_CONFIG_ROOTS
    # Only names inside the roots: "/abs/x.py" or "../x.py" would escape them.
    if relative.parts and not relative.is_absolute() and ".." not in relative.parts:
        for root in roots:
            candidate = root / relative
            if candidate.is_file():
                return str(candidate)
    names = shared_config_names() + experiment_config_names()
    # A config given by its file name alone ("sqr_dab_detr_synthetic.py") matches on the last part.
    same_file = [n for n in names if PurePosixPath(n).name == relative.name]
    close = same_file + [
        n for n in difflib.get_close_matches(str(relative), names, n=5) if n not in same_file
    ]
    kind = "shared" if shared else "experiment"
    searched = ", ".join(str(r) for r in roots)
    hint = (
        f"; close matches: {', '.join(close)}"
        if close
        else f"; no close match among the {len(names)} configs"
    )
    raise FileNotFoundError(f"{kind} config {name!r} not found under: {searched}{hint}")


__all__ = ["L", "LazyCall", "LazyConfig", "instantiate", "locate"]
