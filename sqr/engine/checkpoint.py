"""Checkpoints: atomic writes, loading without arbitrary unpickling, and a load report.

Built on fvcore's ``Checkpointer`` (file naming, ``last_checkpoint``, ``PeriodicCheckpointer``).
What changes here:

* every file is written to a temporary name and renamed, so a crash never leaves a truncated
  checkpoint or a ``last_checkpoint`` pointing at one;
* ``.pth`` files load with ``torch.load(weights_only=True)`` and detectron2 ``.pkl`` files through
  :class:`RestrictedUnpickler`, which only rebuilds NumPy arrays and plain containers;
* every model load logs, and returns, a :class:`LoadReport`.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer

from sqr.modeling.converters import convert, detect_format
from sqr.utils import comm
from sqr.utils.file_io import write_atomically

logger = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked to rebuild an object that is not plain data."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle NumPy arrays, NumPy scalars and plain containers; refuse everything else.

    detectron2's ``.pkl`` weights are pickled dicts of NumPy arrays. Plain ``pickle.load`` would
    run any callable the file names, so only the globals needed to rebuild arrays are allowed.
    """

    _ALLOWED = {
        ("_codecs", "encode"),  # how protocol-2 pickles store bytes (the array buffers)
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def __init__(self, file: Any, filename: str) -> None:
        super().__init__(file, encoding="latin1")  # detectron2 files were pickled by Python 2
        self._filename = filename

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType"):  # NumPy >= 1.25 dtype classes
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self._filename}: refusing to unpickle '{module}.{name}'; only NumPy arrays and "
            "plain containers may appear in a weights file"
        )


def load_pickle_weights(filename: str) -> dict[str, Any]:
    """Read a detectron2-style ``.pkl`` weights file safely.

    Returns:
        ``{"model": {name: Tensor}, ...}``; a bare dict of arrays is wrapped under ``"model"``.
    """
    with open(filename, "rb") as f:
        data = RestrictedUnpickler(f, filename).load()
    if not isinstance(data, dict):
        raise ValueError(f"{filename}: expected a dict of weights, got {type(data).__name__}")
    if "model" not in data and "blobs" in data:
        data = {"model": data["blobs"]}
    elif "model" not in data:
        data = {"model": data}
    data["model"] = {
        key: torch.as_tensor(np.asarray(value))
        for key, value in data["model"].items()
        if not key.endswith("_momentum")  # Caffe2 solver state in old files
    }
    return data


def load_checkpoint_file(filename: str) -> dict[str, Any]:
    """Read a ``.pth``/``.pkl`` file without unpickling arbitrary objects."""
    if filename.endswith(".pkl"):
        return load_pickle_weights(filename)
    try:
        data = torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{filename}: not loadable as plain tensors and containers (weights_only=True): {e}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{filename}: expected a dict, got {type(data).__name__}")
    if "model" not in data and isinstance(data.get("state_dict"), dict):
        # mmdet/mmcv: {"meta", "state_dict", "optimizer"}; only the weights carry over.
        return {"model": data["state_dict"]}
    if not any(isinstance(v, dict) for v in data.values()):
        data = {"model": data}  # a bare state_dict
    return data


@dataclass
class LoadReport:
    """What a weights load did to the model's state_dict keys."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )

    def matched_fraction(self, model: torch.nn.Module) -> float:
        """Share of the model's parameter elements that were filled by the checkpoint."""
        params = dict(model.named_parameters())
        total = sum(p.numel() for p in params.values())
        filled = sum(params[k].numel() for k in self.matched if k in params)
        return filled / max(total, 1)

    def summary(self) -> str:
        lines = [
            f"matched {len(self.matched)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.shape_mismatched)}"
        ]
        if self.missing:
            lines.append("missing in checkpoint: " + ", ".join(self.missing))
        if self.unexpected:
            lines.append("unexpected in checkpoint: " + ", ".join(self.unexpected))
        for key, got, want in self.shape_mismatched:
            lines.append(f"shape mismatch, skipped: {key} checkpoint {got} vs model {want}")
        return "\n".join(lines)


class DetectionCheckpointer(Checkpointer):
    """fvcore ``Checkpointer`` with atomic writes, safe loads and load reports.

    Args:
        model: the model (a DistributedDataParallel wrapper is unwrapped).
        save_dir: where checkpoints and ``last_checkpoint`` live.
        save_to_disk: whether this process writes (the main process in distributed runs).
        checkpointables: other objects with ``state_dict``/``load_state_dict`` (optimizer, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool = True,
        **checkpointables: Any,
    ) -> None:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.logger = logger  # fvcore's own messages then reach log.txt with ours
        self.last_report: LoadReport | None = None

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        write_atomically(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        write_atomically(path, lambda f: f.write(last_filename_basename), mode="w")

    def _load_file(self, f: str) -> dict[str, Any]:
        return load_checkpoint_file(f)

    def _load_model(self, checkpoint: dict[str, Any]) -> None:
        state = {
            key.removeprefix("module."): torch.as_tensor(value)
            for key, value in checkpoint.pop("model").items()
        }
        foreign = detect_format(state)
        if foreign is not None:  # detectron2 / detrex names: map them explicitly to ours
            self.logger.info("Converting checkpoint names from the %s format", foreign)
            state = convert(state, foreign)
        model_state = self.model.state_dict()
        report = LoadReport()
        for key, value in list(state.items()):
            if key in model_state and value.shape != model_state[key].shape:
                report.shape_mismatched.append(
                    (key, tuple(value.shape), tuple(model_state[key].shape))
                )
                del state[key]
        result = self.model.load_state_dict(state, strict=False)
        report.missing = sorted(result.missing_keys)
        report.unexpected = sorted(result.unexpected_keys)
        report.matched = sorted(k for k in state if k in model_state)
        self.last_report = report
        self.logger.info("Load report: %s", report.summary())
        return None  # the report above replaces fvcore's incompatible-keys log

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load ``path`` (a file, or a URL/zoo name resolved by :mod:`sqr.engine.model_zoo`)."""
        if not path:
            self.logger.info("No checkpoint given: the model keeps its initialisation")
            return {}
        if not os.path.isfile(path):
            from .model_zoo import resolve

            if comm.is_main_process():  # one download; the other ranks then find it cached
                resolve(path)
            comm.synchronize()
            path = resolve(path)
        self.logger.info("Loading checkpoint from %s", path)
        return super().load(path, checkpointables)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` in ``save_dir`` when asked and present, else load
        ``path`` as weights only (no optimizer, scheduler or iteration)."""
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            extra = self.load(last)
            self.logger.info(
                "Resuming from %s at iteration %d", last, extra.get("iteration", -1) + 1
            )
            return extra
        if resume:
            self.logger.info(
                "--resume: no last_checkpoint in %s; starting fresh from init_checkpoint=%r",
                self.save_dir,
                path,
            )
        return self.load(path, checkpointables=[])


def load_trained_weights(model: torch.nn.Module, path: str, *, purpose: str) -> None:
    """Load the weights of a trained ``model`` and refuse a checkpoint of another model.

    Args:
        model: the model to fill.
        path: the checkpoint (``train.init_checkpoint``).
        purpose: what needs the weights, for the error messages (e.g. "--eval-only").

    Raises:
        ValueError: ``path`` is empty, or the checkpoint fills less than half of the model's
            parameters.
    """
    if not path:
        raise ValueError(
            f"{purpose} needs trained weights: set train.init_checkpoint=/path/to/model.pth"
        )
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(path, checkpointables=[])
    filled = checkpointer.last_report.matched_fraction(model)
    if filled < 0.5:
        raise ValueError(
            f"{purpose}: {path} fills only {filled:.0%} of the model's parameters; this is not "
            "a checkpoint of this model (see the load report above)"
        )
