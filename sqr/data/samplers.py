"""Samplers for distributed training and inference.

Training uses one global, infinite, deterministic stream of sample positions that every rank
slices identically, so the data seen at iteration ``i`` (and the random seed of each sample's
augmentation) depends only on ``(seed, i, total_batch_size)`` -- not on the number of
processes, the number of loader workers, or whether the run was resumed. Each sample also
carries the epoch of its iteration, so that epoch-dependent augmentation (RT-DETR's stop-epoch
policy) reads it wherever the sample is mapped: in the main process or in a loader worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from sqr.utils import comm

__all__ = [
    "InferenceSampler",
    "SampleKey",
    "TrainingBatchSampler",
    "derive_seed",
    "epoch_at_iteration",
]

logger = logging.getLogger(__name__)

_MASK_63 = (1 << 63) - 1
# Distinct stream tags so that epoch-permutation seeds and per-sample seeds never coincide.
_EPOCH_TAG = 0
_SAMPLE_TAG = 1


def derive_seed(*entropy: int) -> int:
    """Deterministically hash non-negative integers into a 63-bit seed.

    Args:
        *entropy: Non-negative integers (e.g. a base seed and a counter).

    Returns:
        An int in ``[0, 2**63)``; it fits both ``torch.manual_seed`` and int64 tensors.
    """
    state = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & _MASK_63


def epoch_at_iteration(iteration: int, dataset_size: int, total_batch_size: int) -> int:
    """The epoch of a training iteration: how many times the samples seen before it
    (``iteration * total_batch_size`` over all ranks) went through ``dataset_size`` records.

    Args:
        iteration: Global iteration (0-based).
        dataset_size: Number of training records.
        total_batch_size: Images per iteration over all ranks.
    """
    if iteration < 0 or dataset_size <= 0 or total_batch_size <= 0:
        raise ValueError(
            f"epoch_at_iteration needs iteration >= 0 and positive sizes, got {iteration=}, "
            f"{dataset_size=}, {total_batch_size=}"
        )
    return iteration * total_batch_size // dataset_size


class SampleKey(NamedTuple):
    """One training sample as :class:`TrainingBatchSampler` yields it, and as
    :class:`~sqr.data.build.MapDataset` takes it.

    Attributes:
        index: Dataset index.
        seed: Seed of the sample's augmentation (a hash of the base seed and the position).
        epoch: Epoch of the sample's iteration (:func:`epoch_at_iteration`).
    """

    index: int
    seed: int
    epoch: int


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Fill in rank/world size from the process group and validate them."""
    world_size = comm.get_world_size() if world_size is None else int(world_size)
    rank = comm.get_rank() if rank is None else int(rank)
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"Invalid rank={rank} for world_size={world_size}")
    return rank, world_size


class TrainingBatchSampler(Sampler[list[SampleKey]]):
    """Infinite batch sampler yielding this rank's share of each global batch.

    Global sample position ``p`` (0, 1, 2, ...) belongs to epoch ``p // N`` and maps to dataset
    index ``perm_epoch[p % N]``, where ``perm_epoch`` is ``torch.randperm(N)`` drawn from a
    generator seeded by ``(seed, epoch)`` (the identity when ``shuffle=False``). Global iteration
    ``i`` covers positions ``[i*T, (i+1)*T)``; rank ``r`` gets the contiguous slice
    ``[i*T + r*b, i*T + (r+1)*b)`` with ``b = T // world_size``. So every epoch visits each
    index exactly once, and the union of all ranks' batches at iteration ``i`` is exactly the
    single-process batch at ``i``.

    Each batch element is a :class:`SampleKey` ``(dataset_index, sample_seed, epoch)``:
    ``sample_seed`` is a 63-bit hash of ``(seed, p)``, which :class:`sqr.data.build.MapDataset`
    seeds the augmentation with; ``epoch`` is the epoch of iteration ``i``,
    ``i * T // N`` (:func:`epoch_at_iteration`), the same for every sample of a global batch on
    every rank (a batch that straddles two permutations belongs to the epoch it starts in).

    Set :attr:`start_iter` before creating an iterator to resume: the first yielded batch is
    then iteration ``start_iter``'s batch of an uninterrupted run, epoch included.

    The sampler is infinite and has no ``__len__``.

    Args:
        dataset_size: Number of records ``N``.
        total_batch_size: Images per iteration over all ranks ``T``.
        shuffle: Shuffle each epoch; otherwise walk the dataset in order.
        seed: Base seed (non-negative).
        rank: This process's rank; defaults to the process group's.
        world_size: Number of processes; defaults to the process group's.
    """

    def __init__(
        self,
        dataset_size: int,
        total_batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError(f"TrainingBatchSampler needs a non-empty dataset, got {dataset_size=}")
        if total_batch_size <= 0:
            raise ValueError(f"total_batch_size must be positive, got {total_batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        if total_batch_size % self.world_size != 0:
            raise ValueError(
                f"total_batch_size={total_batch_size} is not divisible by "
                f"world_size={self.world_size}"
            )
        self.dataset_size = int(dataset_size)
        self.total_batch_size = int(total_batch_size)
        self.batch_size = self.total_batch_size // self.world_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.start_iter: int = 0
        # A batch spans at most a few epochs, so a tiny cache avoids recomputing permutations.
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        """Dataset order of one epoch.

        Args:
            epoch: Epoch number.

        Returns:
            int64 Tensor[N], a permutation of ``range(N)``.
        """
        perm = self._perm_cache.get(epoch)
        if perm is None:
            if self.shuffle:
                gen = torch.Generator()
                gen.manual_seed(derive_seed(self.seed, _EPOCH_TAG, epoch))
                perm = torch.randperm(self.dataset_size, generator=gen)
            else:
                perm = torch.arange(self.dataset_size)
            if len(self._perm_cache) >= 4:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = perm
        return perm

    def position_to_sample(self, position: int) -> tuple[int, int]:
        """Map a global stream position to ``(dataset_index, sample_seed)``.

        Args:
            position: Global sample position ``p >= 0``.

        Returns:
            The dataset index and the augmentation seed for that position.
        """
        epoch, offset = divmod(position, self.dataset_size)
        index = int(self._permutation(epoch)[offset])
        return index, derive_seed(self.seed, _SAMPLE_TAG, position)

    def batch_at(self, iteration: int) -> list[SampleKey]:
        """This rank's batch at a global iteration.

        Args:
            iteration: Global iteration number ``i >= 0``.

        Returns:
            ``batch_size`` keys ``(dataset_index, sample_seed, epoch)``.
        """
        if iteration < 0:
            raise ValueError(f"iteration must be non-negative, got {iteration}")
        epoch = epoch_at_iteration(iteration, self.dataset_size, self.total_batch_size)
        first = iteration * self.total_batch_size + self.rank * self.batch_size
        return [
            SampleKey(*self.position_to_sample(p), epoch)
            for p in range(first, first + self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        iteration = int(self.start_iter)
        if iteration < 0:
            raise ValueError(f"start_iter must be non-negative, got {iteration}")
        while True:
            yield self.batch_at(iteration)
            iteration += 1


class InferenceSampler(Sampler[int]):
    """Contiguous, near-equal shard of ``range(size)`` for this rank.

    Ranks receive consecutive blocks in rank order; the first ``size % world_size`` ranks get
    one extra index. Concatenating all shards in rank order gives ``range(size)`` exactly (no
    padding or duplication, so evaluation counts each image once).

    Args:
        size: Dataset size.
        rank: This process's rank; defaults to the process group's.
        world_size: Number of processes; defaults to the process group's.
    """

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        if size < 0:
            raise ValueError(f"InferenceSampler size must be non-negative, got {size}")
        self.size = int(size)
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        base, extra = divmod(self.size, self.world_size)
        self.begin = self.rank * base + min(self.rank, extra)
        self.end = self.begin + base + (1 if self.rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin
