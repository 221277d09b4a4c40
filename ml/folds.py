"""Cross-validation folds of the heads (their internal L2 search and out-of-fold probabilities):
stratified by class (or a multi-label row's rarest tag), optionally grouped by source image."""
from __future__ import annotations

import numpy as np

__all__ = ["stratified_folds"]


def stratified_folds(
    y: np.ndarray, n_folds: int, seed: int = 0, groups: np.ndarray | None = None
) -> np.ndarray:
    """Fold id (n,) per sample; each class is spread round-robin over folds after shuffling.

    Works for single-label ints or a multi-label matrix (stratified on each row's rarest tag,
    a cheap approximation that keeps rare tags spread out). ``groups`` (n,): rows of one group
    (augmented views or box crops of one image) share a fold, stratified by the group's first
    row; otherwise a held-out fold would hold near-copies of training rows.
    """
    y = np.asarray(y)
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        _, first, row_group = np.unique(groups, return_index=True, return_inverse=True)
        return stratified_folds(y[first], n_folds, seed)[row_group]
    rng = np.random.default_rng(seed)
    if y.ndim == 2:
        freq = y.sum(axis=0)
        # key = rarest positive tag of the row, or -1 for rows without tags
        masked = np.where(y > 0, freq[None, :], np.inf)
        key = np.where(np.isfinite(masked.min(axis=1)), masked.argmin(axis=1), -1)
    else:
        key = y
    folds = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(key):
        idx = np.flatnonzero(key == c)
        rng.shuffle(idx)
        # continuing the round-robin across classes keeps fold sizes balanced
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return folds
