import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from ml.noise import knn_disagreement, knn_indices, suspicion_components, suspicion_scores
from tests.ml._embeddings import datasets_dir, shoes_embeddings

# Lite0 + Lite2, each [centre crop | max over a 2x2 tile grid]: the features with which the
# flipped-label recall clears 60 % (docs/ml-results.md); needs the optional Lite2 weights.
RICH_BACKBONE = "efficientnet-lite0+efficientnet-lite2"
RICH_SPEC = "center:mean+tiles2:max"


def _flip(y: np.ndarray, n_classes: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_flip = int(round(frac * len(y)))
    idx = rng.choice(len(y), n_flip, replace=False)
    noisy = y.copy()
    noisy[idx] = (noisy[idx] + rng.integers(1, n_classes, n_flip)) % n_classes  # always another class
    return noisy, idx


def _flip_recall(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
    """Flip 5 % of y (draw `seed`); (share of them in the top 5 % most suspicious, ROC AUC)."""
    noisy, flipped = _flip(y, 3, 0.05, seed)
    scores = suspicion_scores(X, noisy, 3, seed=0)
    assert scores.shape == noisy.shape and np.isfinite(scores).all()
    assert scores.min() >= 0 and scores.max() <= 1
    top = np.argsort(-scores, kind="stable")[: len(flipped)]
    is_flipped = np.isin(np.arange(len(noisy)), flipped)
    return float(np.isin(flipped, top).mean()), float(roc_auc_score(is_flipped, scores))


def _rich_shoe_features() -> tuple[np.ndarray, np.ndarray]:
    """Shoes train split in RICH_SPEC features, cached on disk by ml.features (first run
    embeds 825 photos x 5 crops per backbone; later runs only read .npy files)."""
    from ml.backbones import available_backbones
    from ml.datasets import load_task
    from ml.features import make_store, spec_features, spec_views

    missing = [b for b in RICH_BACKBONE.split("+") if b not in available_backbones()]
    if missing:
        pytest.skip(f"offline weights not installed: {missing}")
    if not (datasets_dir() / "shoes").is_dir():
        pytest.skip("shoes dataset not available")
    task = load_task("shoes-3", datasets_dir())
    store = make_store(RICH_BACKBONE)
    store.ensure(task.paths, task.shas, spec_views(RICH_SPEC))
    train = task.splits[0][0]
    return spec_features(store, task.shas, RICH_SPEC)[train], task.y[train]


def test_flipped_shoe_labels_rank_high():
    """5 % of the shoes train labels flipped; the top 5 % most suspicious should hold most of them.

    Measured (Lite0 embeddings, 6 flip draws): 47-61 % recall, mean ~55 %, vs 5 % at random;
    each signal alone averages ~48-53 %. The head itself is only ~81 % accurate on shoes, so
    ~19 % of the clean labels look as implausible to it as a flipped one: a 60 % floor is not
    reachable reliably with these embeddings, hence the floors below.
    """
    shoes = shoes_embeddings()
    recalls, aucs = zip(*[_flip_recall(shoes.X_train, shoes.y_train, seed) for seed in range(3)])
    print(f"flipped-label recall@5%: {np.round(recalls, 3)} (mean {np.mean(recalls):.3f}); AUC {np.round(aucs, 3)}")
    assert np.mean(recalls) >= 0.45 and min(recalls) >= 0.35
    assert min(aucs) >= 0.85


def test_flipped_shoe_labels_rank_high_with_richer_features():
    """The issue's bar: the top 5 % most suspicious hold >= 60 % of the flipped labels.

    Reached with richer features, not with Lite0 centre crops: measured over flip draws 0-9,
    recall mean 0.631 (0.556-0.667) for Lite0+Lite2 [centre | tiles2 max], vs 0.561 for Lite0
    centre and 0.600 for Lite2 [centre | tiles2 max] alone. Draws 0-5 here (mean 0.634)."""
    X, y = _rich_shoe_features()
    recalls, aucs = zip(*[_flip_recall(X, y, seed) for seed in range(6)])
    print(f"rich features: recall@5%: {np.round(recalls, 3)} (mean {np.mean(recalls):.3f}); "
          f"AUC {np.round(aucs, 3)}")
    assert np.mean(recalls) >= 0.60 and min(recalls) >= 0.50
    assert min(aucs) >= 0.90


def test_knn_indices_match_sklearn():
    X = np.random.default_rng(0).normal(size=(300, 24)).astype(np.float32)
    idx, sims = knn_indices(X, 7)
    ref = NearestNeighbors(n_neighbors=8, metric="cosine").fit(X).kneighbors(X, return_distance=False)[:, 1:]
    np.testing.assert_array_equal(idx, ref)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # most similar first
    assert not np.any(idx == np.arange(300)[:, None])  # never itself


def test_an_item_with_an_identical_copy_gets_the_copy_as_nearest_neighbour_and_never_itself():
    X = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    X[7] = X[3]  # the same image imported twice: equal similarity to itself and to the copy
    idx, sims = knn_indices(X, 4)
    assert idx[3, 0] == 7 and idx[7, 0] == 3 and sims[3, 0] == pytest.approx(1.0, abs=1e-5)
    assert not np.any(idx == np.arange(50)[:, None])
    assert idx.shape == (50, 4) and np.all(np.diff(sims, axis=1) <= 1e-6)


def test_knn_disagreement_hand_made():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1, 8)) + 0.05 * rng.normal(size=(12, 8))
    b = -a[:1] + 0.05 * rng.normal(size=(12, 8))
    X = np.vstack([a, b])
    y = np.array([0] * 12 + [1] * 12)
    y[3] = 1  # a mislabeled item in cluster a
    d = knn_disagreement(X, y, n_neighbors=5)
    assert d[3] == pytest.approx(1.0)  # all its neighbours say 0
    assert np.all(d[12:] == 0)  # cluster b is clean and its neighbours are within b
    assert d[np.r_[0:3, 4:12]].max() <= 0.5
    # a class with 2 members (a tight pair of its own): only its 1 possible same-label
    # neighbour is consulted, so the pair is not suspicious for being a small class
    pair = rng.normal(size=(1, 8)) + 0.01 * rng.normal(size=(2, 8))
    X2 = np.vstack([X, pair])
    y2 = np.concatenate([y, [2, 2]])
    d2 = knn_disagreement(X2, y2, n_neighbors=5)
    assert d2[24] == 0 and d2[25] == 0
    # a singleton class has no evidence either way
    y3 = y2.copy()
    y3[25] = 3
    assert np.isnan(knn_disagreement(X2, y3, n_neighbors=5)[25])


def test_components_and_small_inputs():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 16)).astype(np.float32)
    y = np.array([0] * 19 + [1] * 20 + [2])  # class 2 is a singleton
    c = suspicion_components(X, y, 4, k_folds=5, n_neighbors=5)
    assert c["oof_proba"].shape == (40, 4)
    assert np.isnan(c["p_given"][39]) and np.isnan(c["knn_disagreement"][39])
    assert c["score"][39] == 0.0  # no evidence -> not flagged
    assert np.isfinite(c["score"]).all()
    np.testing.assert_array_equal(c["score"], suspicion_scores(X, y, 4, k_folds=5, n_neighbors=5))
    # too few items to cross-validate: kNN alone still works
    tiny = suspicion_scores(X[:3], np.array([0, 0, 1]), 2)
    assert tiny.shape == (3,) and np.isfinite(tiny).all()
