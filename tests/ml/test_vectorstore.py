"""ml.vectorstore: append-only float16 shards with an id map."""
from __future__ import annotations

import time

import numpy as np
import pytest

from ml import vectorstore
from ml.vectorstore import VectorStore


def rand(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_vectors_come_back_by_id_in_the_order_asked(tmp_path):
    store = VectorStore(tmp_path, 8)
    v = rand(5)
    store.add([10, 11, 12, 13, 14], v)
    ids, got = store.get([13, 10, 99])
    assert ids.tolist() == [13, 10]  # 99 is not there and is dropped
    np.testing.assert_allclose(got, v[[3, 0]], atol=2e-3)  # float16 on disk
    assert 12 in store and 99 not in store and len(store) == 5


def test_a_reopened_store_infers_its_dimension_and_sees_every_shard(tmp_path):
    VectorStore(tmp_path, 8).add([1, 2], rand(2))
    VectorStore(tmp_path, 8).add([3], rand(1, seed=1))
    reopened = VectorStore(tmp_path)
    assert reopened.dim == 8
    assert sorted(reopened.ids().tolist()) == [1, 2, 3]


def test_the_newest_vector_of_an_id_wins(tmp_path):
    store = VectorStore(tmp_path, 8)
    store.add([1, 2], np.zeros((2, 8), np.float32))
    store.add([2], np.ones((1, 8), np.float32))
    _, got = store.get([1, 2])
    assert got[0].sum() == 0 and got[1].sum() == 8
    assert len(store) == 2


def test_compaction_keeps_every_id_and_the_newest_values(tmp_path, monkeypatch):
    monkeypatch.setattr(vectorstore, "COMPACT_AFTER", 3)
    store = VectorStore(tmp_path, 8)
    for i in range(6):
        store.add([i, 100], np.full((2, 8), i, np.float32))
    assert len(list(tmp_path.glob("*.ids.npy"))) <= 3
    ids, got = store.all()
    assert sorted(ids.tolist()) == [0, 1, 2, 3, 4, 5, 100]
    assert got[ids.tolist().index(100)][0] == 5


def test_a_half_written_shard_is_invisible(tmp_path):
    store = VectorStore(tmp_path, 8)
    store.add([1], rand(1))
    # A writer died after the vectors and before the ids: the shard must not count.
    np.save(tmp_path / "shard-99999999999999999999-dead.vec.npy", rand(1))
    assert VectorStore(tmp_path, 8).ids().tolist() == [1]


@pytest.mark.parametrize(
    "ids,vecs,field",
    [([1, 2], rand(1), "ids"), ([1], rand(1, d=4), "vectors"), ([1], np.full((1, 8), np.nan), "vectors")],
)
def test_bad_input_is_refused_with_the_field_named(tmp_path, ids, vecs, field):
    with pytest.raises(ValueError, match=field):
        VectorStore(tmp_path, 8).add(ids, vecs)


def test_values_beyond_float16_range_are_refused_with_the_ids_named(tmp_path):
    vecs = rand(3)
    vecs[1, 0] = 70000.0  # finite in float32, inf once stored as float16
    with pytest.raises(ValueError, match=r"float16.*\[6\]"):
        VectorStore(tmp_path, 8).add([5, 6, 7], vecs)
    assert len(VectorStore(tmp_path, 8)) == 0  # nothing half-stored


def _write_shard_as_add_does(root, stem: str, ids: list[int], vecs: np.ndarray) -> None:
    # The order ``add`` uses: vectors first, then the ids that make the shard count.
    np.save(root / f"{stem}.vec.npy", vecs.astype(np.float16))
    np.save(root / f"{stem}.ids.npy", np.asarray(ids, np.int64))


def test_a_vector_written_while_compacting_still_wins_over_the_merged_one(tmp_path):
    store = VectorStore(tmp_path, 2)
    store.add([7], np.array([[1.0, 0.0]]))
    store.add([8], np.array([[0.0, 1.0]]))
    # A concurrent ``add`` names its shard now, but its files land only after the merge is done.
    late_stem = f"shard-{time.time_ns():020d}-feedbeef"
    store.compact()
    _write_shard_as_add_does(tmp_path, late_stem, [7], np.array([[5.0, 5.0]]))
    ids, got = VectorStore(tmp_path, 2).get([7, 8])
    assert ids.tolist() == [7, 8] and got.tolist() == [[5.0, 5.0], [0.0, 1.0]]


def test_re_merging_a_merged_shard_keeps_its_values_winning_and_its_name_short(tmp_path):
    store = VectorStore(tmp_path, 2)
    store.add([1], np.array([[1.0, 1.0]]))
    slow_stem = f"shard-{time.time_ns():020d}-0badc0de"  # a slow writer named its shard here
    store.add([2], np.array([[2.0, 2.0]]))
    store.compact()
    first = [p.name for p in tmp_path.glob("*.ids.npy")]
    _write_shard_as_add_does(tmp_path, slow_stem, [1, 3], np.array([[9.0, 9.0], [3.0, 3.0]]))
    store.compact()  # the newest shard it merges is itself a merged shard
    second = [p.name for p in tmp_path.glob("*.ids.npy")]
    assert len(second) == 1 and second[0] > first[0] and len(second[0]) == len(first[0])
    ids, got = store.get([1, 2, 3])
    assert got[:, 0].tolist() == [1.0, 2.0, 3.0]  # id 1's slow write is older by name: it loses
