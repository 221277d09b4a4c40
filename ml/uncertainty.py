"""Per-item uncertainty scores for the review queue and active learning.

All functions take a probability matrix ``P`` of shape (n, k) (rows are softmax outputs for
single-label heads, independent sigmoid outputs for multi-label heads) and return an (n,)
float64 array. They never produce NaN for rows containing zeros, and cope with k = 1.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "entropy",
    "margin",
    "least_confidence",
    "multilabel_uncertainty",
    "uncertainty_score",
]


def _as_proba(P: np.ndarray) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2:
        raise ValueError(f"expected a 2-D probability matrix, got shape {P.shape}")
    # Tiny negative values / overshoot from float32 softmax must not leak into logs or sorting.
    return np.clip(P, 0.0, 1.0)


def entropy(P: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row divided by log(k), so 0 = one-hot and 1 = uniform.

    With k = 1 there is only one possible answer, hence no uncertainty: 0.
    """
    P = _as_proba(P)
    n, k = P.shape
    if k <= 1:
        return np.zeros(n)
    # 0 * log(0) is 0 by convention; computing log only where p > 0 avoids NaN/warnings.
    plogp = np.zeros_like(P)
    pos = P > 0
    plogp[pos] = P[pos] * np.log(P[pos])
    return np.clip(-plogp.sum(axis=1) / np.log(k), 0.0, 1.0)


def _top2(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, k = P.shape
    if k == 0:
        return np.zeros(n), np.zeros(n)
    if k == 1:
        # No runner-up exists; treat it as probability 0 so the margin is just p(top1).
        return P[:, 0], np.zeros(n)
    part = np.partition(P, k - 2, axis=1)
    return part[:, k - 1], part[:, k - 2]


def margin(P: np.ndarray) -> np.ndarray:
    """p(top1) - p(top2) per row; small = the head can hardly tell its two best guesses apart."""
    top1, top2 = _top2(_as_proba(P))
    return np.clip(top1 - top2, 0.0, 1.0)


def least_confidence(P: np.ndarray) -> np.ndarray:
    """1 - max probability per row."""
    P = _as_proba(P)
    if P.shape[1] == 0:
        return np.zeros(P.shape[0])
    return 1.0 - P.max(axis=1)


def multilabel_uncertainty(P: np.ndarray, thresholds: np.ndarray | float | None = None) -> np.ndarray:
    """How close the least-settled tag of each row is to its decision threshold, in [0, 1].

    For each tag the distance |p - t| is divided by the largest distance possible on that side
    of the threshold (t below it, 1 - t above it), so a tag at p = 0 or p = 1 scores 0 and a tag
    exactly on its threshold scores 1 whatever t is. A row's score is its maximum over tags:
    a single undecided tag is enough for a reviewer to look at the item.
    """
    P = _as_proba(P)
    n, k = P.shape
    if k == 0:
        return np.zeros(n)
    t = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, dtype=np.float64), (k,))
    t = np.clip(t, 0.0, 1.0)
    above = P >= t
    # Guard the t == 0 / t == 1 sides (their span is empty): any p there is "on the threshold"
    # only if it equals t, which the numerator already captures.
    span = np.where(above, 1.0 - t, t)
    dist = np.abs(P - t)
    rel = np.divide(dist, span, out=np.zeros_like(dist), where=span > 0)
    closeness = 1.0 - np.clip(rel, 0.0, 1.0)
    return closeness.max(axis=1)


def uncertainty_score(
    P: np.ndarray, multilabel: bool = False, thresholds: np.ndarray | float | None = None
) -> np.ndarray:
    """The review queue's sort key in [0, 1]; higher = the model is less sure.

    Single-label: 1 - margin. The margin is what a reviewer's answer actually resolves (which of
    the two leading tags is right); entropy grows with probability mass smeared over many
    irrelevant tags, which over-ranks items in projects with many tags, and least confidence
    ignores whether the runner-up is a real contender. Multi-label: ``multilabel_uncertainty``
    against the head's per-tag thresholds (0.5 when none are given).
    """
    if multilabel:
        return multilabel_uncertainty(P, thresholds)
    return 1.0 - margin(P)
