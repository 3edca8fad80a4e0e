"""Datasets and data loaders for training and inference."""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from sqr.data.samplers import InferenceSampler, TrainingBatchSampler, derive_seed

__all__ = [
    "MapDataset",
    "epoch_aware_parts",
    "trivial_batch_collator",
    "worker_init_fn",
    "build_detection_train_loader",
    "build_detection_test_loader",
]

logger = logging.getLogger(__name__)


class SerializedList(Sequence):
    """A list of picklable records stored as one byte buffer (detectron2's
    ``DatasetFromList(serialize=True)``).

    A list of dicts is millions of Python objects whose reference counts every forked loader
    worker touches, so each worker gradually copies them all (about 0.5 GB per process for COCO
    train, times the workers and ranks). One NumPy buffer and its offsets have no such objects;
    every access unpickles a fresh copy of the record.

    Args:
        records: the records.
    """

    def __init__(self, records: Sequence[Any]) -> None:
        chunks = [np.frombuffer(pickle.dumps(r, protocol=-1), dtype=np.uint8) for r in records]
        self._ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
        self._buffer = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        index %= len(self)
        start = int(self._ends[index - 1]) if index else 0
        return pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())


def epoch_aware_parts(mapper: Any) -> list[Any]:
    """The objects in a mapper that have a ``set_epoch(epoch)`` method, each once.

    Walked: the mapper, its ``augmentation`` attribute (the mappers' convention, e.g.
    :class:`~sqr.data.mapper.DetrDatasetMapper`), ``nn.Module`` children, and the ``transforms``
    lists of v2 containers (``Compose``, ``RandomChoice``), which ``nn.Module.modules()`` does
    not see.

    Args:
        mapper: A dataset mapper.

    Returns:
        The objects found, e.g. :class:`~sqr.data.rtdetr.UntilEpoch` gates.
    """
    found: dict[int, Any] = {}
    stack = [mapper]
    while stack:
        item = stack.pop()
        if item is None or id(item) in found:
            continue
        found[id(item)] = item
        if isinstance(item, nn.Module):
            stack.extend(item.children())
        stack.extend(getattr(item, "transforms", None) or [])
        stack.append(getattr(item, "augmentation", None))
    return [item for item in found.values() if callable(getattr(item, "set_epoch", None))]


class MapDataset(Dataset):
    """Apply a mapper to a list of records, optionally under a per-sample seed and epoch.

    ``dataset[i]`` maps record ``i`` using whatever RNG state the process has.
    ``dataset[(i, seed)]`` maps record ``i`` with torch's CPU RNG, Python's ``random`` and
    NumPy's global RNG all seeded from ``seed``, restoring the previous states afterwards. Since
    :class:`~sqr.data.samplers.TrainingBatchSampler` derives ``seed`` from the global sample
    position, augmentation is then independent of which worker (or how many workers) handled
    the sample.

    ``dataset[(i, seed, epoch)]`` (a :class:`~sqr.data.samplers.SampleKey`, what the training
    sampler yields) also tells the mapper's :func:`epoch_aware_parts` the epoch before mapping,
    and records it in a dict output as ``"epoch"`` (where a batch collate such as
    :class:`~sqr.data.rtdetr.MultiScaleCollate` reads it). Both happen in the process that
    maps the sample, a loader worker or the main process alike: the epoch travels with the
    sample, so the workers' copies of the mapper need no message from the trainer, and a
    resumed sampler's first samples carry the resumed epoch.

    Args:
        records: Dataset records (stored serialised, see :class:`SerializedList`).
        mapper: Callable turning one record into a model input.
    """

    def __init__(self, records: list[dict[str, Any]], mapper: Callable[[dict[str, Any]], Any]):
        self.records = SerializedList(records)
        self.mapper = mapper
        # Found once; the list is pickled with the mapper into each worker, and refers to the
        # worker's own copies.
        self._epoch_aware = epoch_aware_parts(mapper)

    def __len__(self) -> int:
        return len(self.records)

    def _map_seeded(self, record: dict[str, Any], seed: int) -> Any:
        """Run the mapper with all global RNGs seeded from ``seed``, then restore them."""
        py_state = random.getstate()
        np_state = np.random.get_state()
        # fork_rng(devices=[]) saves/restores only the CPU generator. We seed that generator
        # directly rather than via torch.manual_seed, which would also reseed every CUDA device
        # and disturb the training process's GPU randomness when num_workers == 0.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            random.seed(seed)
            # NumPy's legacy seeding only takes 32-bit values.
            np.random.seed(seed % (1 << 32))
            try:
                return self.mapper(record)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> Any:
        """Map one record.

        Args:
            key: A record index, ``(index, sample_seed)`` or ``(index, sample_seed, epoch)``.

        Returns:
            The mapper's output; with an epoch, a dict output has ``"epoch"`` added.
        """
        if not isinstance(key, tuple):
            return self.mapper(self.records[int(key)])
        if len(key) not in (2, 3):
            raise KeyError(
                f"MapDataset key must be an index, (index, seed) or (index, seed, epoch), got "
                f"{key!r}"
            )
        index, seed, *epoch = (int(k) for k in key)
        if not epoch:
            return self._map_seeded(self.records[index], seed)
        for part in self._epoch_aware:
            part.set_epoch(epoch[0])
        out = self._map_seeded(self.records[index], seed)
        if isinstance(out, dict):
            out["epoch"] = epoch[0]
        return out


def trivial_batch_collator(batch: list[Any]) -> list[Any]:
    """Return the batch as a list, leaving images of different sizes unstacked.

    Args:
        batch: Mapped samples.

    Returns:
        The same samples, as a list.
    """
    return list(batch)


def worker_init_fn(worker_id: int) -> None:
    """Seed NumPy and Python ``random`` in a loader worker.

    torch already gives every worker a distinct seed (``torch.initial_seed()``); NumPy does not,
    so forked workers would otherwise share the parent's NumPy state.

    Args:
        worker_id: Worker index (unused; the torch seed is already worker-specific).
    """
    del worker_id
    seed = torch.initial_seed() % (1 << 32)
    np.random.seed(seed)
    random.seed(seed)


def _load_records(dataset: str | Sequence[str] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resolve dataset names or pass a list of records through.

    Args:
        dataset: A registered name, a sequence of names, or a list of records.

    Returns:
        The concatenated records.

    Raises:
        ValueError: If a dataset (or the concatenation) is empty.
    """
    if isinstance(dataset, str):
        dataset = [dataset]
    items = list(dataset)
    if not items:
        raise ValueError("Dataset is empty: got an empty list of records/dataset names")
    if all(isinstance(d, dict) for d in items):
        return items
    if not all(isinstance(d, str) for d in items):
        raise TypeError(
            "dataset must be a name, a sequence of names, or a list of record dicts; got "
            f"element types {sorted({type(d).__name__ for d in items})}"
        )

    from sqr.data.catalog import load_dataset  # late import: the catalog pulls in COCO loading

    records: list[dict[str, Any]] = []
    for name in items:
        recs, _ = load_dataset(name)
        if len(recs) == 0:
            raise ValueError(f"Dataset {name!r} is empty (0 records)")
        logger.info("Loaded %d records from dataset %r", len(recs), name)
        records.extend(recs)
    return records


def build_detection_train_loader(
    dataset: str | Sequence[str] | list[dict[str, Any]],
    mapper: Callable[[dict[str, Any]], Any],
    total_batch_size: int,
    *,
    num_workers: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    pin_memory: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] = trivial_batch_collator,
) -> DataLoader:
    """Build an infinite training loader for this rank.

    Each iteration yields a list of ``total_batch_size // world_size`` mapped samples. The
    loader's ``batch_sampler`` is a :class:`~sqr.data.samplers.TrainingBatchSampler` (set its
    ``start_iter`` before ``iter(loader)`` to resume) and its ``dataset`` a :class:`MapDataset`.

    Args:
        dataset: A registered dataset name, several names (concatenated), or a list of records.
        mapper: Callable mapping a record to a model input, e.g.
            :class:`~sqr.data.mapper.DetrDatasetMapper`.
        total_batch_size: Images per iteration summed over all ranks.
        num_workers: Loader worker processes (0 loads in the main process).
        seed: Base seed of the sample order and of the per-sample augmentation seeds.
        shuffle: Shuffle every epoch.
        pin_memory: page-lock the batches so that the model's ``non_blocking`` copies to the GPU
            overlap with compute (None: when CUDA is available).
        collate_fn: turns the list of mapped samples into the batch (the list itself by
            default; e.g. :class:`~sqr.data.rtdetr.MultiScaleCollate`).

    Returns:
        The DataLoader (infinite; ``len()`` is undefined).
    """
    records = _load_records(dataset)
    if not records:
        raise ValueError(f"Training dataset {dataset!r} is empty")
    map_dataset = MapDataset(records, mapper)
    sampler = TrainingBatchSampler(len(records), total_batch_size, shuffle=shuffle, seed=seed)
    logger.info(
        "Train loader: %d records, total batch %d (%d per rank), %d workers",
        len(records),
        total_batch_size,
        sampler.batch_size,
        num_workers,
    )
    return DataLoader(
        map_dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=worker_init_fn,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        # A private generator: creating the iterator (worker base seeds) must not draw from the
        # global RNG, or a resumed run would consume one draw more than an uninterrupted one.
        generator=torch.Generator().manual_seed(derive_seed(seed, sampler.rank)),
    )


def build_detection_test_loader(
    dataset: str | list[dict[str, Any]],
    mapper: Callable[[dict[str, Any]], Any],
    *,
    num_workers: int = 0,
    batch_size: int = 1,
) -> DataLoader:
    """Build a finite inference loader over this rank's contiguous shard.

    Args:
        dataset: A registered dataset name (or several) or a list of records.
        mapper: Callable mapping a record to a model input.
        num_workers: Loader worker processes.
        batch_size: Images per batch on this rank.

    Returns:
        A DataLoader yielding lists of mapped samples, in dataset order.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    records = _load_records(dataset)
    if not records:
        raise ValueError(f"Test dataset {dataset!r} is empty")
    sampler = InferenceSampler(len(records))
    batch_sampler = BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(
        MapDataset(records, mapper),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_fn,
        # Evaluating in the middle of training must leave the global RNG untouched.
        generator=torch.Generator().manual_seed(0),
    )
