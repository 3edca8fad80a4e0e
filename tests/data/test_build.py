"""Tests for sqr.data.build."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

import sqr.data.catalog
from sqr.data.build import (
    MapDataset,
    build_detection_test_loader,
    build_detection_train_loader,
    trivial_batch_collator,
)


def random_mapper(record: dict) -> dict:
    """Draw from every global RNG so that any seeding leak shows up in the outputs."""
    return {
        "id": record["id"],
        "torch": torch.rand(2).tolist(),
        "python": random.random(),
        "numpy": float(np.random.rand()),
    }


def id_mapper(record: dict) -> int:
    return record["id"]


def make_records(n: int) -> list[dict]:
    return [{"id": i} for i in range(n)]


def test_map_dataset_seeded_is_reproducible_and_restores_rng():
    ds = MapDataset(make_records(4), random_mapper)
    assert len(ds) == 4
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[(2, 99)]
    # The caller's torch RNG is untouched by the seeded call.
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # disturb global state; the seeded result must not change
    random.random()
    b = ds[(2, 99)]
    assert a == b and a["id"] == 2
    assert ds[(2, 100)] != a
    # A plain int key maps without reseeding.
    assert ds[1]["id"] == 1


def test_train_loader_yields_lists_and_exposes_sampler():
    loader = build_detection_train_loader(make_records(5), id_mapper, total_batch_size=2, seed=0)
    assert loader.batch_sampler.total_batch_size == 2
    assert len(loader.dataset) == 5
    with pytest.raises(TypeError):
        len(loader)  # infinite
    batches = list(itertools.islice(loader, 6))
    assert all(isinstance(b, list) and len(b) == 2 for b in batches)
    # 6 iterations x 2 = 12 positions: the first 10 are two full epochs over ids 0..4.
    flat = [i for b in batches for i in b]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))


def test_train_loader_resume_via_start_iter():
    fresh = list(
        itertools.islice(build_detection_train_loader(make_records(5), random_mapper, 2, seed=7), 6)
    )
    loader = build_detection_train_loader(make_records(5), random_mapper, 2, seed=7)
    loader.batch_sampler.start_iter = 4
    assert list(itertools.islice(loader, 2)) == fresh[4:]


@pytest.mark.slow
def test_train_loader_independent_of_num_workers():
    # Same keys -> same augmentation randomness, whether mapped in-process or by 2 workers
    # (which would otherwise each have their own RNG streams).
    records = make_records(6)
    outputs = []
    for workers in (0, 2):
        loader = build_detection_train_loader(
            records, random_mapper, total_batch_size=3, num_workers=workers, seed=11
        )
        outputs.append(list(itertools.islice(loader, 4)))
        del loader  # shut down persistent workers
    assert outputs[0] == outputs[1]
    # Sanity: the draws actually differ between samples.
    assert len({o["python"] for batch in outputs[0] for o in batch}) == 12


def test_test_loader_order_and_batches():
    loader = build_detection_test_loader(make_records(5), id_mapper, batch_size=2)
    # Single process: InferenceSampler covers everything in order; last batch is partial.
    assert list(loader) == [[0, 1], [2, 3], [4]]
    assert len(loader) == 3


def test_named_datasets_are_concatenated(monkeypatch):
    fake = {"a": make_records(2), "b": [{"id": 10}]}
    monkeypatch.setattr(sqr.data.catalog, "load_dataset", lambda name: (fake[name], None))
    loader = build_detection_test_loader(["a", "b"], id_mapper, batch_size=3)
    assert list(loader) == [[0, 1, 10]]
    train = build_detection_train_loader("a", id_mapper, 2, shuffle=False)
    assert next(iter(train)) == [0, 1]


def test_empty_named_dataset_is_an_error(monkeypatch):
    monkeypatch.setattr(sqr.data.catalog, "load_dataset", lambda name: ([], None))
    with pytest.raises(ValueError, match="my_empty_set"):
        build_detection_train_loader("my_empty_set", id_mapper, 2)
    with pytest.raises(ValueError, match="my_empty_set"):
        build_detection_test_loader("my_empty_set", id_mapper)


def test_empty_record_list_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        build_detection_train_loader([], id_mapper, 2)
    with pytest.raises(ValueError, match="empty"):
        build_detection_test_loader([], id_mapper)


def test_trivial_batch_collator():
    assert trivial_batch_collator(({"a": 1}, {"b": 2})) == [{"a": 1}, {"b": 2}]


def test_serialized_records_round_trip_as_fresh_copies() -> None:
    from sqr.data.build import SerializedList

    records = [{"file_name": f"{i}.jpg", "annotations": [{"bbox": [i, 0, 1, 1]}]} for i in range(5)]
    stored = SerializedList(records)
    assert len(stored) == 5 and [stored[i] for i in range(5)] == records
    assert stored[-1] == records[-1]
    first = stored[0]
    first["annotations"].append("changed")  # a copy: the stored record is untouched
    assert stored[0] == records[0]
    with pytest.raises(IndexError, match="record 5 of 5"):
        stored[5]
    assert len(SerializedList([])) == 0
