"""``train.compile``: whether and how the trainer compiles the model with ``torch.compile``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The ``torch.compile`` arguments ``train.compile=dict(...)`` may set.
COMPILE_KEYS = ("backend", "mode", "dynamic", "fullgraph", "options")


def compile_options(value: Any) -> dict[str, Any] | None:
    """The ``torch.compile`` keyword arguments that ``train.compile`` asks for.

    Args:
        value: ``False`` or ``None`` (eager), ``True`` (``torch.compile``'s defaults: the
            inductor backend), or a mapping of some of :data:`COMPILE_KEYS`, e.g.
            ``dict(backend="aot_eager")``; a mapping with ``enabled=False`` is eager too.

    Returns:
        None for eager, else the keyword arguments.

    Raises:
        ValueError: naming ``train.compile`` and the bad value or key.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"train.compile must be True, False or a dict, got {value!r}")
    options = dict(value)
    if not options.pop("enabled", True):
        return None
    unknown = sorted(set(options) - set(COMPILE_KEYS))
    if unknown:
        raise ValueError(
            f"train.compile has unknown key(s) {unknown}: choose from enabled, "
            + ", ".join(COMPILE_KEYS)
        )
    if "options" in options and options["options"] is not None:
        options["options"] = dict(options["options"])
    return options
