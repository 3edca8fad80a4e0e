"""Build objects from LazyCall configs."""

from __future__ import annotations

import pydoc
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig


def locate(name: str) -> Any:
    """Import an object from its dotted path, e.g. ``"torch.nn.Linear"``."""
    obj = pydoc.locate(name)
    if obj is None:
        raise ImportError(f"cannot locate '{name}': no importable object has that path")
    return obj


def instantiate(cfg: Any, _path: str = "") -> Any:
    """Recursively make the calls recorded by ``LazyCall``.

    A mapping with a ``_target_`` key becomes ``target(**other_keys)`` after its values are
    instantiated; other mappings and sequences are rebuilt as plain ``dict``/``list`` with
    instantiated values; anything else is returned unchanged. Interpolations (``${..x}``) are
    resolved on the way.

    Args:
        cfg: a config node, or any object.

    Returns:
        The built object.
    """
    if isinstance(cfg, (ListConfig, list, tuple)):
        items = [instantiate(v, f"{_path}.{i}") for i, v in enumerate(cfg)]
        return tuple(items) if isinstance(cfg, tuple) else items
    if not isinstance(cfg, (DictConfig, Mapping)):
        return cfg
    kwargs = {k: instantiate(v, f"{_path}.{k}" if _path else str(k)) for k, v in cfg.items()}
    if "_target_" not in kwargs:
        return kwargs
    target = kwargs.pop("_target_")
    if isinstance(target, str):
        target = locate(target)
    if not callable(target):
        raise TypeError(f"config '{_path or '<root>'}': _target_ {target!r} is not callable")
    try:
        return target(**kwargs)
    except Exception as e:
        name = getattr(target, "__qualname__", repr(target))
        message = f"while instantiating {name} at config '{_path or '<root>'}': {e}"
        try:
            wrapped = type(e)(message)
        except Exception:  # an exception type with a custom constructor: keep it as it is
            raise e from None
        raise wrapped from e
