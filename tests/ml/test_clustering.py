"""ml.clustering on real shoe embeddings: k from size, purity, stats, the torch assignment, the map."""
from __future__ import annotations

import numpy as np
import pytest

from ml import clustering
from ml.index import normalise

from ._embeddings import shoes_embeddings


@pytest.fixture(scope="module")
def shoes():
    return shoes_embeddings()


def test_k_grows_with_the_square_root_of_library_size_and_is_clamped():
    assert clustering.choose_k(1) == 1
    assert clustering.choose_k(5) == 2
    assert clustering.choose_k(24) == 3
    assert clustering.choose_k(860) == 21
    assert clustering.choose_k(10_000_000) == clustering.K_MAX


def test_clusters_of_shoes_are_purer_than_chance(shoes):
    res = clustering.kmeans(shoes.X_train, 12, seed=0)
    assert res.assign.shape == (len(shoes.X_train),) and set(res.assign.tolist()) <= set(range(12))
    # Chance: the same cluster sizes filled with brands at random (a permutation test).
    rng = np.random.default_rng(0)
    shuffled = [_purity(res.assign, rng.permutation(shoes.y_train)) for _ in range(200)]
    purity = _purity(res.assign, shoes.y_train)
    assert purity > max(shuffled) + 0.1, (purity, max(shuffled))
    assert np.all((res.distance >= -1e-5) & (res.distance <= 2))


def _purity(assign: np.ndarray, y: np.ndarray) -> float:
    return sum(np.bincount(y[assign == c]).max() for c in np.unique(assign)) / len(y)


def test_members_are_closer_to_their_own_centroid_than_to_others(shoes):
    res = clustering.kmeans(shoes.X_train[:300], 5, seed=1)
    sims = normalise(shoes.X_train[:300]) @ res.centroids.T
    assert (sims.argmax(axis=1) == res.assign).mean() > 0.99


def test_cluster_stats_report_unlabeled_share_majority_agreement_and_purity():
    assign = np.array([0, 0, 0, 0, 1, 1])
    label = np.array([5, 5, 6, -1, -1, -1])
    suggested = np.array([5, 5, 5, 7, 8, 8])
    unc = np.array([0.1, 0.1, 0.2, 0.4, 0.2, 0.6])
    c0, c1 = clustering.cluster_stats(assign, 2, label, suggested, unc)
    assert c0["size"] == 4 and c0["n_unlabeled"] == 1 and c0["unlabeled_share"] == 0.25
    assert c0["majority_label"] == 5 and c0["purity"] == pytest.approx(2 / 3)
    assert c0["majority_suggested"] == 7 and c0["agreement"] == 1.0 and c0["mean_uncertainty"] == pytest.approx(0.4)
    assert c1["unlabeled_share"] == 1.0 and c1["purity"] is None and c1["majority_suggested"] == 8
    assert c1["work_saved"] == pytest.approx(2 * 1.0 * (1 - 1.0 * (1 - 0.4)))


def test_work_saved_is_zero_when_the_model_is_unanimous_and_sure_and_full_without_a_model():
    sure = {"size": 10, "unlabeled_share": 1.0, "agreement": 1.0, "mean_uncertainty": 0.0}
    blind = {"size": 10, "unlabeled_share": 0.5, "agreement": None, "mean_uncertainty": None}
    assert clustering.work_saved(sure) == 0.0
    assert clustering.work_saved(blind) == 5.0


def test_the_torch_assignment_finds_the_same_nearest_centroids_as_exact_search(shoes):
    torch = pytest.importorskip("torch")
    X = shoes.X_train[:400]
    C = normalise(shoes.X_train[400:420])
    ta = clustering.TorchAssign(X, device="cpu")
    assign, D, sums = ta.assign_to(torch.from_numpy(C))
    expect = (normalise(X) @ C.T).argmax(axis=1)
    assert (assign == expect).mean() > 0.99
    assert sums.shape == (20, X.shape[1]) and np.allclose(sums.sum(0).numpy(), normalise(X).sum(0), atol=1e-3)
    centroids = clustering.kmeans_torch(X, 6, niter=5, device="cpu")
    assert centroids.shape == (6, X.shape[1]) and np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-4)


def test_the_map_is_two_dimensional_and_scaled(shoes):
    xy = clustering.embed_2d(shoes.X_train[:120])
    assert xy.shape == (120, 2) and np.abs(xy).max() == pytest.approx(1.0)
    sampled = clustering.embed_2d(shoes.X_train[:120], tsne_max=60)
    assert sampled.shape == (120, 2) and np.isfinite(sampled).all()
    assert clustering.embed_2d(shoes.X_train[:2]).shape == (2, 2)
