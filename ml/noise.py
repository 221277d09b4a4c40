"""Label-noise detection: which existing labels deserve a second look.

Two independent signals, averaged:
1. model disagreement: 1 - out-of-fold probability of the given label, from heads trained on
   the other folds (a head that saw the item would just have memorised its label);
2. neighbourhood disagreement: among the item's nearest neighbours (cosine, embedding space),
   the share carrying another label, relative to what the class size allows.
The first catches items the classifier finds implausible; the second catches mislabeled
near-duplicates even where the linear head is weak. Averaging beats either alone: on shoes
(Lite0 embeddings, 5 % of train labels flipped, 6 random draws) the top 5 % held on average
48 % of the flipped labels by model signal alone, 52 % by kNN alone and 55 % (47-61 %)
combined; ROC AUC of the combined score 0.91-0.96.
"""

from __future__ import annotations

import faiss
import numpy as np

from ml.heads import out_of_fold_proba, train_head
from ml.index import normalise

__all__ = ["knn_indices", "knn_disagreement", "suspicion_components", "suspicion_scores"]

# Exact neighbours, always. An IVF index (ml.index, nprobe 32) found 91-93 % of them on
# bench/noise.py's data, 1.6x faster at 40k rows, but the share of flipped labels in the top 5 %
# fell from 0.79 to 0.70 (10k rows) and from 0.95 to 0.91 (40k). Large taxonomies get their
# scores from a worker instead (labeling.services.second_look).
KNN_TEMPERATURE = 0.05  # cosine units; neighbours 0.05 less similar count e times less


def knn_indices(X: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's m = min(n_neighbors, n-1) most cosine-similar other rows, most similar first.

    Returns (indices (n, m) int64, similarities (n, m) float32). Exact: faiss' blocked BLAS
    search with a heap per row, O(n^2 d) (the numpy argpartition over each n-wide row it
    replaced took 2.1x as long at 40k rows: 43 s vs 21 s, bench/noise.py).
    """
    Xn = normalise(np.asarray(X, dtype=np.float32))
    n = len(Xn)
    m = max(0, min(n_neighbors, n - 1))
    if m == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    sims, ids = faiss.knn(Xn, Xn, m + 1, metric=faiss.METRIC_INNER_PRODUCT)
    own = np.arange(n)[:, None]
    # A row is its own first hit unless an identical row ties with it: drop it wherever it is
    # (a stable sort on "is itself" keeps the others in similarity order), else the last hit.
    order = np.argsort(ids == own, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(ids, order, axis=1).astype(np.int64), np.take_along_axis(sims, order, axis=1)


def knn_disagreement(
    X: np.ndarray, y: np.ndarray, n_neighbors: int = 10, temperature: float = KNN_TEMPERATURE,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Similarity-weighted share of the nearest neighbours that carry another label, in [0, 1].

    Weights are softmax(cosine / temperature): a near-duplicate with another label is much
    stronger evidence than a loosely similar image (measured: +3-4 points of flipped-label
    recall on shoes over plain counting). Only the c - 1 nearest neighbours are used for an item
    of a class with c < n_neighbors + 1 members, so small classes do not look suspicious just
    for being small. NaN where undefined (singleton classes, or no neighbours at all).
    ``neighbours``: ``knn_indices``' result found another way (bench/noise.py compares).
    """
    y = np.asarray(y, dtype=np.int64)
    nbrs, sims = knn_indices(X, n_neighbors) if neighbours is None else neighbours
    m = nbrs.shape[1]
    usable = np.minimum(m, np.bincount(y)[y] - 1)  # same-label neighbours that can exist
    mask = np.arange(m)[None, :] < usable[:, None]
    logits = (sims - sims[:, :1]) / temperature  # shift by the row max: exp cannot overflow
    w = np.where(mask, np.exp(logits), 0.0)
    other = (y[nbrs] != y[:, None]) if m else np.zeros((len(y), 0), dtype=bool)
    total = w.sum(axis=1)
    return np.divide((w * other).sum(axis=1), total, out=np.full(len(y), np.nan), where=total > 0)


def suspicion_components(
    X: np.ndarray, y: np.ndarray, n_classes: int, k_folds: int = 5, n_neighbors: int = 10, seed: int = 0,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The pieces behind ``suspicion_scores`` (for explaining a flag in the UI); ``neighbours``
    as in ``knn_disagreement``.

    Returns ``oof_proba`` (n, n_classes), ``p_given`` (n,) out-of-fold probability of the
    given label (NaN when the label's class had no example outside the item's fold),
    ``knn_disagreement`` (n,) and ``score`` (n,).
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    counts = np.bincount(y, minlength=n_classes)
    # folds need at least 2 items each; tiny sets get leave-many-out with fewer folds
    folds = max(2, min(k_folds, n // 2))
    if n >= 4 and (counts > 0).sum() >= 2:
        # choose the L2 strength once on all items (train_head's internal CV) instead of
        # repeating that CV inside each of the k fold heads: k times cheaper, same choice
        l2 = train_head(X, y, n_classes, seed=seed).l2
        P = out_of_fold_proba(X, y, n_classes, n_folds=folds, seed=seed, l2=l2)
        p_given = P[np.arange(n), y]
        # a class seen only in the item's own fold was unknown to its head: no evidence
        p_given[counts[y] < 2] = np.nan
    else:
        P = np.full((n, n_classes), np.nan)
        p_given = np.full(n, np.nan)
    knn = knn_disagreement(X, y, n_neighbors, neighbours=neighbours)
    both = np.stack([1.0 - p_given, knn])
    have = ~np.isnan(both)
    # average the available signals; no evidence at all -> 0 (not suspicious)
    score = np.where(have.any(axis=0), np.nansum(both, axis=0) / np.maximum(have.sum(axis=0), 1), 0.0)
    return {"oof_proba": P, "p_given": p_given, "knn_disagreement": knn, "score": score}


def suspicion_scores(
    X: np.ndarray, y: np.ndarray, n_classes: int, k_folds: int = 5, n_neighbors: int = 10, seed: int = 0
) -> np.ndarray:
    """(n,) in [0, 1], higher = the given label is more likely wrong."""
    return suspicion_components(X, y, n_classes, k_folds, n_neighbors, seed)["score"]
