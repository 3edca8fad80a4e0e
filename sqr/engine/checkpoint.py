"""Checkpoints: atomic writes, loading without arbitrary unpickling, and a load report.

Built on fvcore's ``Checkpointer`` (file naming, ``last_checkpoint``, ``PeriodicCheckpointer``).
What changes here:

* every file is written to a temporary name and renamed, so a crash never leaves a truncated
  checkpoint or a ``last_checkpoint`` pointing at one;
* ``.pth`` files load with ``torch.load(weights_only=True)`` and detectron2 ``.pkl`` files through
  :class:`RestrictedUnpickler`, which only rebuilds NumPy arrays and plain containers;
* every model load logs a :class:`LoadReport` (at WARNING when a tensor of the model stays
  unloaded); a checkpoint that matches none of the model's tensors is refused, and
  ``require_complete=True`` (evaluation, ``--resume``) refuses one that leaves any unloaded;
* an empty, truncated or foreign file is a :class:`CheckpointFileError` naming it;
* ``load(..., weights="ema")`` loads a checkpoint's averaged weights (its ``"ema"`` entry, see
  :class:`~sqr.engine.ema.ModelEMA`) into the model instead of its trained ones.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fvcore.common.checkpoint import (
    Checkpointer,
    get_missing_parameters_message,
    get_unexpected_parameters_message,
)

from sqr.model_zoo.downloads import cached_file_advice
from sqr.modeling.converters import convert, detect_format
from sqr.utils import comm
from sqr.utils.file_io import write_atomically

logger = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked to rebuild an object that is not plain data."""


class CheckpointFileError(ValueError):
    """A file is empty, truncated or corrupt, or not a checkpoint at all."""


class IncompatibleCheckpointError(ValueError):
    """A checkpoint does not fit the model: it matches none of its tensors, or (where every
    tensor must load) leaves some missing or of another shape."""


# How torch.save files begin: a zip archive (torch >= 1.6), or the legacy format, a pickle
# (protocol 2+ starts with the PROTO opcode 0x80).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


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


def _check_torch_file(filename: str) -> None:
    with open(filename, "rb") as f:
        head = f.read(8)
    if not head:
        raise CheckpointFileError(
            f"{filename} is empty (0 bytes): an interrupted copy or download? Fetch it again"
        )
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointFileError(
            f"{filename} is not a PyTorch checkpoint: it starts with {head!r}, not a zip archive "
            "or a pickle (is it a text or HTML file, e.g. a download's error page?)"
        )


def load_checkpoint_file(filename: str) -> dict[str, Any]:
    """Read a ``.pth``/``.pkl`` file without unpickling arbitrary objects.

    Raises:
        CheckpointFileError: the file is empty, truncated, corrupt or not a checkpoint; for a
            file of the download cache the message gives the command that removes it.
        UnsafeCheckpointError: the file would rebuild objects other than tensors and containers.
    """
    try:
        return _read_checkpoint_file(filename)
    except CheckpointFileError as e:
        advice = cached_file_advice(filename)
        if not advice:
            raise
        raise CheckpointFileError(f"{e}. {advice}") from e


def _read_checkpoint_file(filename: str) -> dict[str, Any]:
    if filename.endswith(".pkl"):
        return load_pickle_weights(filename)
    _check_torch_file(filename)
    try:
        data = torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointFileError(f"{filename} is truncated or corrupt: {e}") from e
        raise UnsafeCheckpointError(
            f"{filename}: not loadable as plain tensors and containers (weights_only=True): "
            f"{str(e).splitlines()[0]}"
        ) from e
    except (EOFError, RuntimeError, KeyError, ValueError, OSError) as e:
        # What torch.load raises for a damaged zip archive or pickle stream (OSError: errno 22
        # from a seek before the start of a small archive cut short).
        raise CheckpointFileError(
            f"{filename} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0]})"
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

    @property
    def complete(self) -> bool:
        """Whether every tensor of the model's state_dict was loaded."""
        return not self.missing and not self.shape_mismatched

    def counts(self) -> str:
        return (
            f"matched {len(self.matched)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.shape_mismatched)}"
        )

    def unloaded(self, limit: int = 5) -> str:
        """The first ``limit`` tensors of the model that stay unloaded, shape mismatches first."""
        items = [
            f"{key} checkpoint {got} vs model {want}" for key, got, want in self.shape_mismatched
        ]
        items += [f"{key} missing" for key in self.missing]
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return "; ".join(items[:limit]) + more

    def summary(self) -> str:
        """The counts, then the keys, grouped by module as fvcore groups them."""
        lines = [self.counts()]
        for key, got, want in self.shape_mismatched:
            lines.append(f"shape mismatch, skipped: {key} checkpoint {got} vs model {want}")
        if self.missing:
            lines.append(get_missing_parameters_message(self.missing))
        if self.unexpected:
            lines.append(get_unexpected_parameters_message(self.unexpected))
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
        self._require_complete = False
        self._loading = ""
        self._weights = "model"
        self.resumed_from: str | None = None

    def save(
        self, name: str, *, model_buffers: dict[str, torch.Tensor] | None = None, **kwargs: Any
    ) -> None:
        """Write ``save_dir/name.pth`` atomically and tag it as ``last_checkpoint``.

        Args:
            name: file name without ``.pth``.
            model_buffers: buffers to save instead of the model's current ones (a copy taken
                when the state to save was current; see :class:`~sqr.engine.CheckpointHook`).
            kwargs: extra entries of the checkpoint (``iteration``, ``rng``, ...).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": {**self.model.state_dict(), **(model_buffers or {})}}
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
        data = load_checkpoint_file(f)
        if self._weights == "ema":
            ema = data.pop("ema", None)
            if not isinstance(ema, dict) or not isinstance(ema.get("module"), dict):
                raise IncompatibleCheckpointError(
                    f"{f} has no EMA weights (no 'ema' entry with a 'module' state_dict): it was "
                    "trained without train.ema.enabled; set train.ema.enabled=False to use its "
                    "trained weights"
                )
            data["model"] = ema["module"]
        return data

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
        report.matched = sorted(k for k in state if k in model_state)
        report.unexpected = sorted(k for k in state if k not in model_state)
        mismatched = {key for key, _, _ in report.shape_mismatched}
        report.missing = sorted(k for k in model_state if k not in state and k not in mismatched)
        self.last_report = report
        # Refuse before load_state_dict: a refused checkpoint leaves the model untouched.
        if not report.matched:
            raise IncompatibleCheckpointError(
                f"{self._loading}: none of its {len(state) + len(report.shape_mismatched)} "
                f"tensors fits the model ({report.counts()}); this is not a checkpoint of this "
                f"model. First unloaded: {report.unloaded()}"
            )
        if self._require_complete and not report.complete:
            raise IncompatibleCheckpointError(
                f"{self._loading} is not a checkpoint of this model: {report.counts()}. "
                f"First unloaded: {report.unloaded()}"
            )
        self.model.load_state_dict(state, strict=False)
        level = logging.INFO if report.complete else logging.WARNING
        self.logger.log(level, "Load report for %s: %s", self._loading, report.summary())
        return None  # the report above replaces fvcore's incompatible-keys log

    def load(
        self,
        path: str,
        checkpointables: list[str] | None = None,
        *,
        require_complete: bool = False,
        weights: str = "model",
    ) -> dict[str, Any]:
        """Load ``path`` (a file, or a URL/zoo name resolved by :func:`sqr.model_zoo.resolve`).

        Args:
            path: the checkpoint reference.
            checkpointables: which of the other objects to restore (None: all).
            require_complete: refuse (before touching the model or any other object) a
                checkpoint that leaves a tensor of the model missing or shape-mismatched.
            weights: which weights of the checkpoint fill the model: "model" (the trained
                ones) or "ema" (the moving average a run with ``train.ema.enabled`` saved).

        Raises:
            IncompatibleCheckpointError: the checkpoint fits none of the model's tensors, or
                not all of them with ``require_complete``, or has no EMA weights when asked for
                them.
            CheckpointFileError: the file is empty, corrupt or not a checkpoint.
        """
        if weights not in ("model", "ema"):
            raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
        if not path:
            self.logger.info("No checkpoint given: the model keeps its initialisation")
            return {}
        if not os.path.isfile(path):
            from sqr.model_zoo import resolve

            if comm.is_main_process():  # one download; the other ranks then find it cached
                resolve(path)
            comm.synchronize()
            path = resolve(path)
        self.logger.info("Loading checkpoint from %s", path)
        self._require_complete, self._loading, self._weights = require_complete, path, weights
        try:
            return super().load(path, checkpointables)
        finally:
            self._require_complete, self._loading, self._weights = False, "", "model"

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` in ``save_dir`` when asked and present, else load
        ``path`` as weights only (no optimizer, scheduler or iteration).

        Rank 0 decides whether and from which file to resume, and every rank follows: a node
        that cannot see the checkpoint must not silently restart at iteration 0. Sets
        :attr:`resumed_from` (the file, or None).

        Raises:
            FileNotFoundError: on every rank, when some rank cannot read the file rank 0 chose.
        """
        last = None
        if resume and comm.is_main_process() and self.has_checkpoint():
            last = self.get_checkpoint_file()
        last = comm.broadcast_object(last)
        self.resumed_from = last
        if last is not None:
            readable = comm.all_gather(os.path.isfile(last))
            if not readable[0]:  # rank 0 read last_checkpoint, but the file it names is gone
                raise FileNotFoundError(
                    f"--resume: {os.path.join(self.save_dir, 'last_checkpoint')} names {last}, "
                    "which does not exist; write the name of an existing model_*.pth into "
                    "last_checkpoint, or remove last_checkpoint to start fresh"
                )
            if not all(readable):
                ranks = [rank for rank, ok in enumerate(readable) if not ok]
                raise FileNotFoundError(
                    f"--resume: rank 0 resumes from {last}, which rank(s) {ranks} cannot read; "
                    "every node must see train.output_dir (a shared filesystem)"
                )
            # A run resumes only into the model that wrote the checkpoint.
            extra = self.load(last, require_complete=True)
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


def load_trained_weights(
    model: torch.nn.Module, path: str, *, purpose: str, weights: str = "model"
) -> LoadReport:
    """Load the weights of a trained ``model``, refusing a checkpoint of another model.

    Args:
        model: the model to fill.
        path: the checkpoint (``train.init_checkpoint``).
        purpose: what needs the weights, for the error messages (e.g. "--eval-only").
        weights: "model" (the trained weights) or "ema" (the checkpoint's moving average).

    Returns:
        The load report.

    Raises:
        ValueError: ``path`` is empty.
        IncompatibleCheckpointError: the checkpoint leaves a tensor of the model missing or
            shape-mismatched (the first few are listed); a model evaluated that way would report
            the AP of a partly random network. Or ``weights="ema"`` and it has no EMA.
    """
    if not path:
        raise ValueError(
            f"{purpose} needs trained weights: set train.init_checkpoint=/path/to/model.pth"
        )
    checkpointer = DetectionCheckpointer(model)
    try:
        checkpointer.load(path, checkpointables=[], require_complete=True, weights=weights)
    except IncompatibleCheckpointError as e:
        raise IncompatibleCheckpointError(f"{purpose}: {e}") from e
    return checkpointer.last_report
