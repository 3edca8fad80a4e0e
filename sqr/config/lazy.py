"""Python config files in detectron2's LazyConfig format.

A config file is plain Python that builds a tree of dicts. ``LazyCall(Class)(arg=...)`` records a
call without making it: it returns a ``DictConfig`` whose ``_target_`` is ``Class``, and
:func:`sqr.config.instantiate` makes the call later. Config files may import each other with
relative imports (``from ..common.train import train``); those imports are resolved against the
file system, not ``sys.path``, and every import gives a fresh copy that the importing file may edit.

The format is detectron2's own, so ``detectron2.config.LazyConfig.load`` reads our config files too.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from sqr.utils.file_io import write_atomically

logger = logging.getLogger(__name__)

# Config files are executed as modules of this fake package, which is how the patched import
# below recognises a relative import made from inside a config file.
_CFG_PACKAGE = "sqr._cfg_loader"


class LazyCall:
    """Record a call to ``target`` to be made later by :func:`instantiate`.

    Example::

        model = LazyCall(torch.nn.Linear)(in_features=4, out_features=2)
        model.out_features = 3           # edit before building
        layer = instantiate(model)       # torch.nn.Linear(4, 3)

    Args:
        target: a callable, or its import path as a string ("torch.nn.Linear").
    """

    def __init__(self, target: Any) -> None:
        if not (callable(target) or isinstance(target, str)):
            raise TypeError(f"LazyCall target must be a callable or an import path, got {target!r}")
        self._target = target

    def __call__(self, **kwargs: Any) -> DictConfig:
        kwargs["_target_"] = self._target
        return DictConfig(content=kwargs, flags={"allow_objects": True})


def _to_config(obj: Any) -> Any:
    """Turn plain dicts (recursively) into DictConfig so that config files may use either."""
    if isinstance(obj, dict):
        return DictConfig(content=obj, flags={"allow_objects": True})
    return obj


def _config_file_for(importer_file: str, module: str, level: int) -> str:
    """Resolve ``from <level dots><module> import ...`` made inside ``importer_file``."""
    directory = os.path.dirname(importer_file)
    for _ in range(level - 1):
        directory = os.path.dirname(directory)
    if not module:
        raise ImportError(
            f"{importer_file}: 'from {'.' * level} import ...' is not supported in config files; "
            "import names from a file, e.g. 'from .common import train'"
        )
    path = os.path.join(directory, *module.split(".")) + ".py"
    if not os.path.isfile(path):
        raise ImportError(
            f"{importer_file}: relative import '{'.' * level}{module}' looks for config file "
            f"{path}, which does not exist"
        )
    return path


@contextmanager
def _patch_import() -> Iterator[None]:
    """Make relative imports inside config files load sibling config files."""
    original_import = builtins.__import__

    def new_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        package = (globals or {}).get("__package__") or ""
        if level == 0 or not package.startswith(_CFG_PACKAGE):
            return original_import(name, globals, locals, fromlist, level)
        path = _config_file_for(globals["__file__"], name, level)
        module = _exec_config_file(path)
        for attr in fromlist or ():
            if attr not in module.__dict__:
                raise ImportError(f"cannot import name {attr!r} from config file {path}")
            module.__dict__[attr] = _to_config(module.__dict__[attr])
        return module

    builtins.__import__ = new_import
    try:
        yield
    finally:
        builtins.__import__ = original_import


def _exec_config_file(path: str) -> Any:
    """Execute one config file as a fresh module and return it."""
    spec = importlib.util.spec_from_loader(f"{_CFG_PACKAGE}.{uuid.uuid4().hex}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    # Every file gets its own package name, so relative imports resolve against its directory.
    module.__package__ = f"{_CFG_PACKAGE}.{uuid.uuid4().hex}"
    with open(path, encoding="utf-8") as f:
        source = f.read()
    exec(compile(source, path, "exec"), module.__dict__)
    return module


class LazyConfig:
    """Load, save and override LazyConfig files (detectron2's ``LazyConfig`` API)."""

    @staticmethod
    def load(filename: str, keys: str | Sequence[str] | None = None) -> Any:
        """Load a ``.py`` or ``.yaml`` config file.

        Args:
            filename: path of the config file.
            keys: if given, return only these top-level entries (a tuple for a sequence).

        Returns:
            A ``DictConfig`` of the file's public dict-valued globals, or the selected entries.
        """
        filename = os.path.abspath(os.path.expanduser(filename))
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"config file {filename} does not exist")
        if filename.endswith(".py"):
            with _patch_import():
                namespace = _exec_config_file(filename).__dict__
            cfg = DictConfig(
                {
                    name: _to_config(value)
                    for name, value in namespace.items()
                    if isinstance(value, (DictConfig, ListConfig, dict))
                    and not name.startswith("_")
                },
                flags={"allow_objects": True},
            )
        elif filename.endswith((".yaml", ".yml")):
            with open(filename, encoding="utf-8") as f:
                content = yaml.safe_load(f) or {}
            cfg = DictConfig(content, flags={"allow_objects": True})
        else:
            raise ValueError(f"config file {filename} must end in .py or .yaml")
        if keys is None:
            return cfg
        if isinstance(keys, str):
            return cfg[keys]
        return tuple(cfg[k] for k in keys)

    @staticmethod
    def save(cfg: DictConfig, filename: str) -> None:
        """Write ``cfg`` as YAML, atomically.

        Callables with an import path (classes, functions) are written as that path, which
        :func:`instantiate` accepts back. Anything else YAML cannot hold (a lambda, a tensor) is
        written as its ``repr`` with a warning naming the key: saving never fails on content.
        """
        container = OmegaConf.to_container(cfg, resolve=False)
        text = yaml.safe_dump(_yaml_safe(container, ""), sort_keys=False, default_flow_style=None)
        write_atomically(filename, lambda f: f.write(text), mode="w")

    @staticmethod
    def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """Apply command-line overrides ``a.b.c=value`` in place.

        The value is parsed as a Python literal (``3``, ``1e-4``, ``[1, 2]``, ``True``, ``None``)
        and kept as a string when it is not one (``train.device=cpu``). The key must already exist,
        so that a typo is an error rather than a silently ignored setting; prefix it with ``+``
        (``+train.note=x``) to add a new key on purpose.

        Returns:
            ``cfg``, for chaining.
        """
        for override in overrides:
            key, sep, text = override.partition("=")
            if not sep or not key:
                raise ValueError(f"override {override!r} is not of the form key=value")
            add = key.startswith("+")
            key = key.lstrip("+")
            _check_key(cfg, key, add)
            OmegaConf.update(cfg, key, _parse_value(text), merge=not add, force_add=add)
        return cfg


def _parse_value(text: str) -> Any:
    """A Python literal, else a list of such values for ``[a, b]``, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):  # [res3, res4]: bare words
        inner = stripped[1:-1].strip()
        return [_parse_value(item.strip()) for item in inner.split(",")] if inner else []
    return text


def _check_key(cfg: DictConfig, key: str, add: bool) -> None:
    """Refuse an override key that does not exist (unless ``add``) or that goes below a value.

    A key that continues past a plain value names the value's own key instead: detectron2's
    ``dataloader.train.dataset.names=x`` is ``dataloader.train.dataset=x`` here. Adding
    ``names`` with ``+`` would silently turn the dataset name into ``{"names": "x"}``.

    Raises:
        KeyError: naming the key, the deepest existing part of it and what to type instead.
    """
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth]) or "<root>"
        if isinstance(node, (DictConfig, Mapping)):
            if part in node:
                node = node[part]
                continue
            if add:
                return  # OmegaConf creates the missing entries
            choices = sorted(str(k) for k in node)
            raise KeyError(
                f"override key '{key}' does not exist: '{parent}' has no entry '{part}'"
                + (f" (it has: {', '.join(choices)})" if choices else "")
                + f". Prefix the key with '+' to add it: +{key}=..."
            )
        if isinstance(node, (ListConfig, list)):
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            indices = f", indexed 0..{len(node) - 1}" if len(node) else ""
            raise KeyError(
                f"override key '{key}' does not exist: '{parent}' is a list of {len(node)} "
                f"entries{indices}; set an entry by its index or the whole list: {parent}=[...]"
            )
        raise KeyError(
            f"override key '{key}' goes below the value {node!r} of '{parent}', which has no "
            f"entries; set the value itself: {parent}=..."
        )


def _yaml_safe(obj: Any, path: str) -> Any:
    """Recursively replace what YAML cannot hold by import paths or strings."""
    if isinstance(obj, Mapping):
        # _target_ first: the file then reads as "call X with these arguments".
        keys = sorted(obj, key=lambda k: k != "_target_")
        return {str(k): _yaml_safe(obj[k], f"{path}.{k}" if path else str(k)) for k in keys}
    if isinstance(obj, (list, tuple)):
        return [_yaml_safe(v, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    import_path = _import_path(obj)
    if import_path is not None:
        return import_path
    logger.warning(
        "config.yaml: '%s' holds %r, which YAML cannot hold; saved as a string", path, obj
    )
    return repr(obj)


def _import_path(obj: Any) -> str | None:
    """``module.qualname`` of a class or function that can be imported back, else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (callable(obj) and module and qualname) or "<" in qualname:
        return None
    return f"{module}.{qualname}"
