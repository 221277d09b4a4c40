"""Batch selection for active learning: which unlabeled items to show the reviewer next.

``select_batch`` returns indices into the candidate pool, most useful first. The default
"diverse" strategy exists because a page of the 20 most uncertain items is usually 20 shots
of the same ambiguous product: one answer would have resolved them all. Instead the most
uncertain part of the pool is clustered into ``k`` groups (k-means on L2-normalised
embeddings, i.e. cosine geometry) and the most uncertain item of each group is taken.

Why "diverse" is the default (measured with ``python -m ml.simulate``, Lite0 centre features,
one seed label per class, 3 paired repeats, full pool; docs/ml-results.md): labels until the
mean test accuracy first reaches 95 % of the all-labels accuracy, shoes-3 (pages of 10):
diverse 143, margin 223, random 243; fl27-28way (pages of 20): diverse 368, margin 388,
random 548. That is 0.59 / 0.67 of random's labels -- ahead of margin on both, but not the
<= 0.50 the issue asks for. (Adding two settings -- fl27 pages of 10, shoes on Lite2
features -- margin and diverse tie over all four, 0.69 vs 0.68 of random on average;
diverse is never behind on mean accuracy along the curve.) Variants that did not beat it on both tasks: a wider candidate
pool (30 k: shoes 93, fl27 448), a narrower one (3-4 k), density-weighted uncertainty,
clustering the whole pool, BADGE-style gradient embeddings, and a representative
(TypiClust-like) cold start followed by margin.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ml.uncertainty import entropy, least_confidence, margin, uncertainty_score

__all__ = ["STRATEGIES", "select_batch", "kmeans_labels"]

Strategy = Literal["diverse", "entropy", "margin", "least_confidence", "random"]
STRATEGIES: tuple[str, ...] = ("diverse", "entropy", "margin", "least_confidence", "random")
POOL_FACTOR = 10  # "diverse" clusters the POOL_FACTOR * k most uncertain candidates
FAISS_MIN_ROWS = 20_000


def _scores(P: np.ndarray, strategy: str, multilabel: bool, thresholds: np.ndarray | None) -> np.ndarray:
    """Higher = more worth labeling."""
    if multilabel or strategy == "diverse":
        # entropy/margin/least confidence assume one answer per row; for multi-label heads all
        # uncertainty strategies fall back to distance-to-threshold (ml.uncertainty).
        return uncertainty_score(P, multilabel=multilabel, thresholds=thresholds)
    if strategy == "entropy":
        return entropy(P)
    if strategy == "margin":
        return 1.0 - margin(P)
    return least_confidence(P)


def _rank(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores keep index order so results are reproducible."""
    return np.argsort(-scores, kind="stable")


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _kmeanspp_init(X: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """k-means++ seeding: far-away points are likelier centres, so separated groups each get one.
    (faiss' own random init can put two centres in one group and merge two others.)"""
    rng = np.random.default_rng(seed)
    C = np.empty((n_clusters, X.shape[1]), dtype=np.float32)
    C[0] = X[rng.integers(len(X))]
    d2 = ((X - C[0]) ** 2).sum(axis=1)
    for j in range(1, n_clusters):
        total = d2.sum()
        C[j] = X[rng.choice(len(X), p=d2 / total) if total > 0 else rng.integers(len(X))]
        d2 = np.minimum(d2, ((X - C[j]) ** 2).sum(axis=1))
    return C


def _nearest(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return (2 * X @ C.T - (C * C).sum(axis=1)).argmax(axis=1)  # argmin |x - c|^2


def kmeans_labels(
    X: np.ndarray, n_clusters: int, seed: int = 0, n_iter: int = 20, backend: str = "auto"
) -> np.ndarray:
    """Cluster id per row (k-means++ init, then Lloyd iterations).

    backend: "numpy", "faiss", or "auto" = numpy for the small pools selection uses, faiss
    (when installed) from FAISS_MIN_ROWS rows on, where its multithreaded search pays off.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    n_clusters = max(1, min(n_clusters, len(X)))
    if backend == "auto":
        backend = "numpy"
        if len(X) >= FAISS_MIN_ROWS:
            try:
                import faiss  # noqa: F401, PLC0415 - optional dependency

                backend = "faiss"
            except ImportError:
                pass
    C = _kmeanspp_init(X, n_clusters, seed)
    if backend == "faiss":
        import faiss  # noqa: PLC0415

        # min_points_per_centroid=1: small pools are normal here; the default would warn
        km = faiss.Kmeans(X.shape[1], n_clusters, niter=n_iter, seed=seed, min_points_per_centroid=1)
        km.train(X, init_centroids=C)
        return km.index.search(X, 1)[1].ravel()
    for _ in range(n_iter):
        a = _nearest(X, C)
        for j in np.unique(a):
            C[j] = X[a == j].mean(axis=0)
    return _nearest(X, C)


def select_batch(
    P: np.ndarray,
    X: np.ndarray | None,
    k: int,
    strategy: Strategy = "diverse",
    seed: int = 0,
    *,
    multilabel: bool = False,
    thresholds: np.ndarray | None = None,
) -> np.ndarray:
    """Pick ``k`` candidate indices (int64, most uncertain first; random order for "random").

    P: (n, n_classes) head probabilities for the unlabeled pool; X: (n, d) embeddings, only
    needed for "diverse". Returns all n indices when n <= k.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    P = np.asarray(P)
    n = len(P)
    k = max(0, min(int(k), n))
    if strategy == "random":
        return np.random.default_rng(seed).permutation(n)[:k].astype(np.int64)
    scores = _scores(P, strategy, multilabel, thresholds)
    order = _rank(scores)
    if strategy != "diverse" or k <= 1 or n <= k:
        return order[:k].astype(np.int64)
    if X is None or len(X) != n:
        raise ValueError("strategy 'diverse' needs the (n, d) embeddings X of the candidates")

    pool = order[: min(n, POOL_FACTOR * k)]
    labels = kmeans_labels(_normalise(np.asarray(X)[pool]), k, seed=seed)
    # pool is sorted by uncertainty, so the first member met per cluster is its most uncertain
    _, first = np.unique(labels, return_index=True)
    picked = pool[np.sort(first)]
    if len(picked) < k:
        # k-means can leave clusters empty (e.g. duplicate vectors): top up by uncertainty
        rest = pool[~np.isin(pool, picked)]
        picked = np.concatenate([picked, rest[: k - len(picked)]])
    return picked[_rank(scores[picked])].astype(np.int64)
