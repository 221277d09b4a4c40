"""Label-noise detection: which existing labels deserve a second look.

Two independent signals, averaged:
1. model disagreement: 1 - out-of-fold probability of the given label, from heads trained on
   the other folds (a head that saw the item would just have memorised its label);
2. neighbourhood disagreement: among the item's nearest neighbours (cosine, embedding space),
   the share carrying another label, relative to what the class size allows.
The first catches items the classifier finds implausible; the second catches mislabeled
near-duplicates even where the linear head is weak. Averaging is more robust than either
(measured on shoes with 5 % flipped labels: see tests/ml/test_noise.py).
"""

from __future__ import annotations

import numpy as np

from ml.heads import out_of_fold_proba

__all__ = ["knn_indices", "knn_disagreement", "suspicion_components", "suspicion_scores"]

_BLOCK = 2048  # rows per similarity block: bounds memory at BLOCK x n floats


def knn_indices(X: np.ndarray, n_neighbors: int) -> np.ndarray:
    """(n, m) indices of each row's m = min(n_neighbors, n-1) most cosine-similar other rows."""
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    m = min(n_neighbors, n - 1)
    if m <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(norms > 0, norms, 1.0)
    out = np.empty((n, m), dtype=np.int64)
    for start in range(0, n, _BLOCK):
        rows = np.arange(start, min(n, start + _BLOCK))
        S = Xn[rows] @ Xn.T
        S[np.arange(len(rows)), rows] = -np.inf  # an item is not its own neighbour
        part = np.argpartition(-S, m - 1, axis=1)[:, :m]
        # order neighbours by similarity (ties by index) so results are deterministic
        sims = np.take_along_axis(S, part, axis=1)
        idx = np.lexsort((part, -sims), axis=1)
        out[rows] = np.take_along_axis(part, idx, axis=1)
    return out


def knn_disagreement(X: np.ndarray, y: np.ndarray, n_neighbors: int = 10) -> np.ndarray:
    """Share of neighbours with another label, scaled by the most agreement possible.

    An item of a class with c members can have at most min(m, c - 1) same-label neighbours;
    dividing by that keeps small classes from looking suspicious just for being small.
    NaN where it is undefined (singleton classes, or no neighbours at all).
    """
    y = np.asarray(y, dtype=np.int64)
    nbrs = knn_indices(X, n_neighbors)
    m = nbrs.shape[1]
    agree = (y[nbrs] == y[:, None]).sum(axis=1)
    class_size = np.bincount(y)[y]
    possible = np.minimum(m, class_size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(possible > 0, 1.0 - agree / np.maximum(possible, 1), np.nan)


def suspicion_components(
    X: np.ndarray, y: np.ndarray, n_classes: int, k_folds: int = 5, n_neighbors: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """The pieces behind ``suspicion_scores`` (for explaining a flag in the UI).

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
        P = out_of_fold_proba(X, y, n_classes, n_folds=folds, seed=seed)
        p_given = P[np.arange(n), y]
        # a class seen only in the item's own fold was unknown to its head: no evidence
        p_given[counts[y] < 2] = np.nan
    else:
        P = np.full((n, n_classes), np.nan)
        p_given = np.full(n, np.nan)
    knn = knn_disagreement(X, y, n_neighbors)
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
