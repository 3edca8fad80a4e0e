"""Files that are never half-written, honour the umask, and hold strict JSON."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import IO, Any

__all__ = [
    "TEMP_PREFIX",
    "remove_stale_temporaries",
    "to_strict_json",
    "write_atomically",
    "write_json",
]

logger = logging.getLogger(__name__)

#: Name prefix of the temporary files :func:`write_atomically` renames onto their destination.
TEMP_PREFIX = ".tmp_"


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str, write: Callable[[IO[Any]], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it onto ``path``.

    Readers see either the old file or the complete new one; if anything fails (including
    KeyboardInterrupt), ``path`` is untouched and the temporary file is removed. Missing parent
    directories are created. The file gets the permissions of any other new file
    (``0o666 & ~umask``), not the owner-only ``0o600`` of ``mkstemp``: on a shared cluster others
    read checkpoints and results.

    Args:
        path: destination file.
        write: writes the content into the open temporary file.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the temporary files that interrupted :func:`write_atomically` calls left in
    ``directory`` and its ``inference/`` folder (a ``kill -9`` skips the clean-up).

    Call it at the start of a run, before anything writes into ``directory``.

    Returns:
        The removed paths.
    """
    removed = []
    for folder in (directory, os.path.join(directory, "inference")):
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*"))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    if removed:
        logger.warning(
            "Removed %d temporary file(s) left by interrupted writes in %s: %s",
            len(removed),
            directory,
            ", ".join(os.path.basename(p) for p in removed),
        )
    return removed


def to_strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None``, so that it serialises as strict
    JSON (Python's ``json`` would write the non-standard tokens ``NaN`` and ``Infinity``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {key: to_strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_strict_json(value) for value in obj]
    return obj


def write_json(path: str, obj: Any, *, indent: int | None = None) -> None:
    """Write ``obj`` atomically as strict JSON (non-finite numbers become ``null``)."""
    text = json.dumps(to_strict_json(obj), indent=indent, allow_nan=False)
    write_atomically(path, lambda f: f.write(text), mode="w")
