"""A process-wide registry of named datasets.

Datasets are referred to by name in configs (``dataloader.train.dataset = "coco_2017_train"``).
A name maps to a COCO json and an image directory; both are resolved only when the
dataset is loaded, so ``$DETECTRON2_DATASETS`` may be set after import.

Built-in names:

* ``coco_2017_train`` / ``coco_2017_val``: COCO 2017 under ``datasets_root()/coco``.
* ``synthetic_shapes_train`` / ``synthetic_shapes_val``: the synthetic shapes dataset
  under ``datasets_root()/synthetic_shapes_v2``, generated on first use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqr.data.coco import Metadata, load_coco_json

__all__ = [
    "datasets_root",
    "get_metadata",
    "list_datasets",
    "load_dataset",
    "register_coco_instances",
]

_ENV_VAR = "DETECTRON2_DATASETS"


@dataclass(frozen=True)
class _Entry:
    """How to find a registered dataset's files.

    Attributes:
        resolve: Returns ``(json_file, image_root)``; called at load time so that built-in paths
            follow the current value of ``$DETECTRON2_DATASETS``.
        arguments: ``(json_file, image_root)`` as given to :func:`register_coco_instances`;
            None for a built-in dataset.
    """

    resolve: Callable[[], tuple[str, str]]
    arguments: tuple[str, str] | None


_REGISTRY: dict[str, _Entry] = {}


def datasets_root() -> Path:
    """Root directory of built-in datasets: ``$DETECTRON2_DATASETS`` or ``./datasets``."""
    return Path(os.environ.get(_ENV_VAR, "datasets"))


def register_coco_instances(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instances dataset under ``name``.

    Nothing is read until :func:`load_dataset` is called. Registering a name again with the
    same paths does nothing: a config file that registers its dataset runs on every load, and
    ``train_net`` loads its config twice in one process (to launch, then to run).

    Args:
        name: Unique dataset name.
        json_file: Path to the COCO instances json.
        image_root: Directory that the json's image ``file_name`` entries are relative to.

    Raises:
        ValueError: If ``name`` is a built-in dataset, or is already registered with another
            ``json_file`` or ``image_root``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Dataset name must be a non-empty string, got {name!r}")
    arguments = (os.fspath(json_file), os.fspath(image_root))
    entry = _REGISTRY.get(name)
    if entry is None:
        _REGISTRY[name] = _Entry(lambda: arguments, arguments)
    elif entry.arguments is None:
        raise ValueError(
            f"Dataset {name!r} is built in and cannot be registered again (with "
            f"json_file={arguments[0]!r}, image_root={arguments[1]!r}); choose another name"
        )
    elif entry.arguments != arguments:
        (old_json, old_root), (new_json, new_root) = entry.arguments, arguments
        raise ValueError(
            f"Dataset {name!r} is already registered with json_file={old_json!r}, "
            f"image_root={old_root!r}; registering it again with json_file={new_json!r}, "
            f"image_root={new_root!r} would change what the name means; choose another name"
        )


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def _resolve(name: str) -> tuple[str, str]:
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"Dataset {name!r} is not registered. Registered datasets: {', '.join(list_datasets())}"
        ) from None
    return entry.resolve()


@functools.lru_cache(maxsize=16)
def _load_cached(
    name: str, json_file: str, image_root: str, stamp: tuple[int, int] | None
) -> tuple[list[dict], Metadata]:
    # Keyed by the resolved paths (so changing $DETECTRON2_DATASETS is honoured) and the
    # json's (mtime, size) stamp (so a regenerated file is re-read).
    del stamp
    return load_coco_json(json_file, image_root, dataset_name=name)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # let load_coco_json raise its descriptive FileNotFoundError
    return st.st_mtime_ns, st.st_size


def load_dataset(name: str) -> tuple[list[dict], Metadata]:
    """Load the records and metadata of a registered dataset.

    Results are cached per process. The returned list is a fresh list, but the record
    dicts inside are shared with the cache: copy a record before modifying it.

    Args:
        name: A name from :func:`list_datasets`.

    Returns:
        ``(records, metadata)`` as produced by :func:`sqr.data.coco.load_coco_json`.

    Raises:
        KeyError: If ``name`` is not registered.
        FileNotFoundError: If the dataset's files are missing.
    """
    json_file, image_root = _resolve(name)
    records, metadata = _load_cached(name, json_file, image_root, _stamp(json_file))
    return list(records), metadata


def get_metadata(name: str) -> Metadata:
    """Metadata of a registered dataset (loads and caches the dataset if needed)."""
    return load_dataset(name)[1]


# --------------------------------------------------------------------------- built-ins

_COCO_LAYOUT = """\
expected layout:
  $DETECTRON2_DATASETS/
    coco/
      annotations/instances_{train,val}2017.json
      train2017/  (images)
      val2017/    (images)"""


def _coco_resolver(split: str) -> Callable[[], tuple[str, str]]:
    def resolve() -> tuple[str, str]:
        root = datasets_root()
        json_file = root / "coco" / "annotations" / f"instances_{split}2017.json"
        image_root = root / "coco" / f"{split}2017"
        for path, kind in ((json_file, "annotation file"), (image_root, "image directory")):
            if not path.exists():
                env = os.environ.get(_ENV_VAR)
                env_desc = f"is set to {env!r}" if env is not None else "is not set"
                raise FileNotFoundError(
                    f"COCO {split}2017 {kind} not found: {path}. Datasets are looked up "
                    f"under ${_ENV_VAR} (which {env_desc}; default './datasets', i.e. "
                    f"{Path('datasets').absolute()}).\n{_COCO_LAYOUT}"
                )
        return str(json_file), str(image_root)

    return resolve


def _synthetic_resolver(split: str) -> Callable[[], tuple[str, str]]:
    def resolve() -> tuple[str, str]:
        # Imported lazily: generation pulls in PIL drawing code that loading COCO never needs.
        from sqr.data import synthetic

        root = synthetic.ensure_synthetic_shapes(datasets_root() / synthetic.DIRNAME)
        return str(root / "annotations" / f"{split}.json"), str(root / split)

    return resolve


for _split in ("train", "val"):
    _REGISTRY[f"coco_2017_{_split}"] = _Entry(_coco_resolver(_split), None)
    _REGISTRY[f"synthetic_shapes_{_split}"] = _Entry(_synthetic_resolver(_split), None)
del _split
