"""Atomic file writes: nothing already on disk is lost or left half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

__all__ = ["write_atomically"]


def write_atomically(path: str, write: Callable[[IO[Any]], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it onto ``path``.

    Readers see either the old file or the complete new one; if anything fails (including
    KeyboardInterrupt), ``path`` is untouched and the temporary file is removed. Missing parent
    directories are created.

    Args:
        path: destination file.
        write: writes the content into the open temporary file.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
    try:
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
