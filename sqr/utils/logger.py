"""Logging setup shared by the tools: console on the main process, ``log.txt`` per rank."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def setup_logger(output_dir: str | None = None, rank: int = 0, name: str = "sqr") -> logging.Logger:
    """Configure the ``sqr`` logger (and the root logger's level) once per process.

    Rank 0 logs INFO to stdout and to ``output_dir/log.txt``; other ranks log warnings to stdout
    and everything to ``output_dir/log.txt.rank{r}``, as detectron2 does.

    Args:
        output_dir: directory for the log file; no file when None.
        rank: this process's global rank.
        name: logger to configure.

    Returns:
        The configured logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)

    console = logging.StreamHandler(stream=sys.stdout)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(formatter)
    logger.addHandler(console)

    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        filename = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        file_handler = logging.FileHandler(filename, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
