"""Tests for sqr.data.samplers."""

from __future__ import annotations

import itertools

import pytest
import torch

from sqr.data.samplers import (
    InferenceSampler,
    SampleKey,
    TrainingBatchSampler,
    epoch_at_iteration,
)


def take(sampler: TrainingBatchSampler, n: int) -> list[list[SampleKey]]:
    """First n batches of a fresh iterator."""
    return list(itertools.islice(iter(sampler), n))


def test_batches_have_per_rank_size_and_valid_entries():
    sampler = TrainingBatchSampler(10, 4, seed=1, rank=1, world_size=2)
    assert (sampler.total_batch_size, sampler.batch_size, sampler.dataset_size) == (4, 2, 10)
    for batch in take(sampler, 20):
        assert len(batch) == 2
        for key in batch:
            assert isinstance(key, SampleKey)
            assert isinstance(key.index, int) and 0 <= key.index < 10
            assert isinstance(key.seed, int) and 0 <= key.seed < 2**63


def test_deterministic_and_seed_dependent():
    a = take(TrainingBatchSampler(13, 4, seed=5, rank=0, world_size=1), 10)
    b = take(TrainingBatchSampler(13, 4, seed=5, rank=0, world_size=1), 10)
    c = take(TrainingBatchSampler(13, 4, seed=6, rank=0, world_size=1), 10)
    assert a == b
    assert a != c


def test_ranks_union_equals_single_process():
    # 2 ranks x 3 images == one process with 6 images per iteration, element for element
    # (rank 0 holds the first half of the global batch, rank 1 the second).
    single = take(TrainingBatchSampler(11, 6, seed=3, rank=0, world_size=1), 8)
    rank0 = take(TrainingBatchSampler(11, 6, seed=3, rank=0, world_size=2), 8)
    rank1 = take(TrainingBatchSampler(11, 6, seed=3, rank=1, world_size=2), 8)
    for i in range(8):
        assert rank0[i] + rank1[i] == single[i]


def test_start_iter_resumes_exact_stream():
    fresh = take(TrainingBatchSampler(7, 4, seed=2, rank=1, world_size=2), 12)
    resumed = TrainingBatchSampler(7, 4, seed=2, rank=1, world_size=2)
    resumed.start_iter = 5
    assert take(resumed, 7) == fresh[5:]


def test_every_epoch_covers_each_index_once():
    # N = 10, T = 4: 5 iterations = 20 positions = exactly 2 epochs; iteration 2 straddles the
    # boundary (positions 8..11).
    sampler = TrainingBatchSampler(10, 4, seed=0, rank=0, world_size=1)
    flat = [index for batch in take(sampler, 5) for index, *_ in batch]
    epoch0, epoch1 = flat[:10], flat[10:]
    assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
    # Shuffled: the two epochs use different permutations and neither is the identity.
    assert epoch0 != epoch1 and epoch0 != list(range(10))
    # Sample seeds depend on the position, so even a repeated index gets a new seed.
    seeds = [seed for batch in take(sampler, 5) for _, seed, _ in batch]
    assert len(set(seeds)) == 20


def test_epoch_at_iteration_counts_samples_seen():
    # 10 records, batch 4: iterations 0-2 start in epoch 0 (positions 0, 4, 8), 3-4 in epoch 1.
    assert [epoch_at_iteration(i, 10, 4) for i in range(6)] == [0, 0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="iteration"):
        epoch_at_iteration(-1, 10, 4)
    with pytest.raises(ValueError, match="dataset_size"):
        epoch_at_iteration(3, 0, 4)


def test_every_sample_carries_the_epoch_of_its_iteration_on_every_rank():
    # N = 10, T = 4 over 2 ranks: iteration 2 covers positions 8..11, straddling the epoch
    # boundary; both ranks' samples belong to epoch 0, as the iteration's first sample does.
    epochs = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    for rank in range(2):
        sampler = TrainingBatchSampler(10, 4, seed=0, rank=rank, world_size=2)
        assert [{key.epoch for key in batch} for batch in take(sampler, 10)] == [
            {epoch} for epoch in epochs
        ]
        resumed = TrainingBatchSampler(10, 4, seed=0, rank=rank, world_size=2)
        resumed.start_iter = 7
        assert [batch[0].epoch for batch in take(resumed, 3)] == epochs[7:]


def test_no_shuffle_walks_in_order():
    # Positions 0..8 over N = 4 without shuffling: 0 1 2 | 3 0 1 | 2 3 0.
    sampler = TrainingBatchSampler(4, 3, shuffle=False, rank=0, world_size=1)
    indices = [[i for i, *_ in batch] for batch in take(sampler, 3)]
    assert indices == [[0, 1, 2], [3, 0, 1], [2, 3, 0]]


def test_epoch_permutation_matches_spec():
    # The permutation of epoch e is torch.randperm(N) from a generator seeded by (seed, e):
    # check against a direct randperm using the sampler's documented seed derivation.
    from sqr.data.samplers import _EPOCH_TAG, derive_seed

    sampler = TrainingBatchSampler(9, 9, seed=4, rank=0, world_size=1)
    for epoch, batch in enumerate(take(sampler, 3)):
        gen = torch.Generator().manual_seed(derive_seed(4, _EPOCH_TAG, epoch))
        assert [i for i, *_ in batch] == torch.randperm(9, generator=gen).tolist()


def test_infinite_has_no_len():
    sampler = TrainingBatchSampler(3, 1, rank=0, world_size=1)
    with pytest.raises(TypeError):
        len(sampler)


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        ((10, 5), {"rank": 0, "world_size": 2}, "total_batch_size=5.*world_size=2"),
        ((0, 4), {}, "dataset_size=0"),
        ((10, 0), {}, "total_batch_size"),
        ((10, 4), {"rank": 2, "world_size": 2}, "rank=2"),
        ((10, 4), {"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainingBatchSampler(*args, **kwargs)


@pytest.mark.parametrize(("size", "world_size"), [(10, 3), (2, 4), (0, 2), (8, 1), (9, 9)])
def test_inference_shards_partition_range(size, world_size):
    shards = [
        list(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    # Rank-order concatenation is exactly range(size), shards are contiguous and near-equal.
    assert sum(shards, []) == list(range(size))
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == [
        len(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)
    ]


def test_inference_shard_sizes_example():
    # 10 items over 3 ranks: 10 = 3 * 3 + 1, so rank 0 gets 4 and ranks 1, 2 get 3.
    assert list(InferenceSampler(10, rank=0, world_size=3)) == [0, 1, 2, 3]
    assert list(InferenceSampler(10, rank=1, world_size=3)) == [4, 5, 6]
    assert list(InferenceSampler(10, rank=2, world_size=3)) == [7, 8, 9]


def test_defaults_to_single_process():
    # Without a process group, rank 0 of 1.
    sampler = TrainingBatchSampler(5, 2)
    assert (sampler.rank, sampler.world_size, sampler.batch_size) == (0, 1, 2)
    assert list(InferenceSampler(3)) == [0, 1, 2]
