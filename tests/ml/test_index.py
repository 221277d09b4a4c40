"""ml.index on real shoe embeddings (EfficientNet-Lite0, cached): neighbours, IVF vs exact,
ids, files and the atomic swap."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from ml.index import VectorIndex, choose_nlist, normalise

from ._embeddings import shoes_embeddings


@pytest.fixture(scope="module")
def shoes():
    return shoes_embeddings()


def test_neighbours_of_a_shoe_are_mostly_the_same_brand(shoes):
    index = VectorIndex.build(np.arange(len(shoes.X_train)), shoes.X_train)
    assert index.kind == "flat"
    _, ids = index.search(shoes.X_test, 10)
    same = (shoes.y_train[ids] == shoes.y_test[:, None]).mean()
    chance = np.bincount(shoes.y_train).max() / len(shoes.y_train)
    assert same > 0.6 and same > chance + 0.2, (same, chance)


def test_similarities_are_cosines_and_the_best_hit_of_an_indexed_vector_is_itself(shoes):
    X = shoes.X_train[:200]
    index = VectorIndex.build(np.arange(1000, 1200), X)
    sims, ids = index.search(X[:5], 3)
    assert ids[:, 0].tolist() == list(range(1000, 1005))
    assert np.allclose(sims[:, 0], 1.0, atol=1e-4)
    Xn = normalise(X)
    assert np.allclose(sims[:, 1], [Xn[i] @ Xn[ids[i, 1] - 1000] for i in range(5)], atol=1e-4)


def test_ivf_finds_what_exact_search_finds_on_real_embeddings(shoes):
    X = np.concatenate([shoes.X_train, shoes.X_test])
    ids = np.arange(len(X))
    exact = VectorIndex.build(ids, X, kind="flat")
    ivf = VectorIndex.build(ids, X, kind="ivf")
    assert ivf.kind == "ivf" and ivf.ntotal == len(X)
    _, truth = exact.search(X[:200], 20)
    _, found = ivf.search(X[:200], 20, nprobe=max(1, choose_nlist(len(X)) // 4))
    recall = np.mean([len(np.intersect1d(f, t)) / 20 for f, t in zip(found, truth)])
    assert recall >= 0.85, recall


def test_adding_an_id_again_replaces_its_vector(shoes):
    X = shoes.X_train[:50]
    index = VectorIndex.build(np.arange(50), X)
    index.add(np.array([7, 50]), X[[20, 21]])
    assert index.ntotal == 51 and sorted(index.ids().tolist()) == list(range(51))
    _, ids = index.search(X[20], 2)
    assert set(ids[0].tolist()) == {7, 20}


def test_a_saved_index_loads_with_the_same_answers(shoes, tmp_path):
    for kind in ("flat", "ivf"):
        index = VectorIndex.build(np.arange(len(shoes.X_train)), shoes.X_train, kind=kind)
        index.save(tmp_path / f"{kind}.faiss")
        again = VectorIndex.load(tmp_path / f"{kind}.faiss")
        assert again.kind == kind and again.ntotal == index.ntotal
        assert np.array_equal(again.search(shoes.X_test[:10], 5)[1], index.search(shoes.X_test[:10], 5)[1])


def test_a_reader_keeps_searching_the_old_index_while_the_file_is_replaced(shoes, tmp_path):
    path = tmp_path / "index.faiss"
    VectorIndex.build(np.arange(100), shoes.X_train[:100]).save(path)
    reader = VectorIndex.load(path)
    VectorIndex.build(np.arange(500, 600), shoes.X_train[100:200]).save(path)  # the rebuild
    assert reader.search(shoes.X_train[3], 1)[1][0, 0] == 3  # the old one still answers
    assert VectorIndex.load(path).search(shoes.X_train[103], 1)[1][0, 0] == 503
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temporary left


def test_a_failed_save_leaves_the_old_file_and_no_temporary(shoes, tmp_path, monkeypatch):
    path = tmp_path / "index.faiss"
    VectorIndex.build(np.arange(100), shoes.X_train[:100]).save(path)
    before = path.read_bytes()

    def half_written(index, name):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", half_written)
    with pytest.raises(RuntimeError):
        VectorIndex.build(np.arange(10), shoes.X_train[:10]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]


def test_zero_vectors_are_indexed_without_nan():
    X = np.zeros((4, 8), dtype=np.float32)
    X[1, 0] = 3.0
    sims, ids = VectorIndex.build(np.arange(4), X).search(X[1], 4)
    assert ids[0, 0] == 1 and np.isfinite(sims).all()
