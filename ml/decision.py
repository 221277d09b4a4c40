"""Decision rules on top of class probabilities, tuned on validation data.

A head trained class-balanced answers "which class is most likely under equal priors".
What a user scores is often something else: balanced accuracy on a task that is 90 % "other"
(the seed's Nike / Adidas / Puma / other), macro-F1 of logo vs no-logo, or plain accuracy.
``fit_class_bias`` finds one additive log-bias per class that maximises the chosen score on
held-out (out-of-fold) probabilities; ``apply_bias`` applies it to new probabilities. For two
classes this is exactly a tuned decision threshold (seed 002's precision / recall trade-off).

Fitting is coordinate ascent over a fixed grid: deterministic, no gradients, and the scores
are piecewise constant anyway. Ties keep the smaller |bias| (prefer the untuned rule).

Also here: per-tag thresholds for multi-label heads (``tune_tag_thresholds``) and the
"neither / other" reject rule on top-1 probability (``reject_threshold`` / ``apply_reject``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ml.metrics import balanced_accuracy, macro_f1

# A multi-label tag's threshold is tuned only with this many positives *and* negatives among
# the tuning rows, and even then only part of the way from 0.5 (weight m / (m + SHRINK), m the
# smaller count). Measured on real embeddings (shoes + FlickrLogos as 8 tags, FlickrLogos as 27
# tags; random training sets of 40-600, 6 draws each, micro-F1 on the rest; docs/ml-results.md
# "Multi-label thresholds"): with the product's balanced weights the out-of-fold F1 threshold
# lost to 0.5 in nearly every draw below about 50 examples a tag (27 tags at 300 labels: 0.486
# vs 0.582 with the old minimum of 5 positives, 0.528 with a minimum of 10); with this rule it
# equals 0.5 up to 150 labels and trails it by 0.004-0.005 at 300-600 labels on 8 tags (the old
# rule: 0.012-0.015). Balanced sigmoids already put 0.5 at the equal-prior cut.
MIN_EXAMPLES_FOR_THRESHOLD = 50
SHRINK_EXAMPLES = 50
SCORES = ("accuracy", "balanced_accuracy", "macro_f1")
GRID = np.round(np.arange(-3.0, 3.0001, 0.25), 2)  # log-bias: x0.05 .. x20 on a class's odds


def _accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    return float((pred == y).mean()) if len(y) else 0.0


# The same definitions the reports use (ml.metrics, checked against scikit-learn), so a rule is
# tuned for exactly the number that is then printed.
SCORE_FNS: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "accuracy": _accuracy, "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1,
}


def apply_bias(proba: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Probabilities (n, k) reweighted by exp(bias) and renormalised; bias (k,) per class or
    (n, k) per row (ml.localmatch.fuse: inlier evidence)."""
    logp = np.log(np.clip(np.asarray(proba, np.float64), 1e-12, None)) + np.asarray(bias, np.float64)
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def fit_class_bias(proba: np.ndarray, y: np.ndarray, score: str = "balanced_accuracy",
                   passes: int = 3, grid: np.ndarray = GRID) -> np.ndarray:
    """Per-class log-bias (k,) maximising ``score`` of argmax(log proba + bias) on (proba, y).

    Use out-of-fold probabilities of the *training* data, never the test set. The first class's
    bias stays 0 (only differences matter), so k classes have k - 1 free parameters; a class
    with no validation sample keeps 0 too (nothing to tune it on)."""
    if score not in SCORE_FNS:
        raise ValueError(f"unknown score {score!r}; choose from {SCORES}")
    fn = SCORE_FNS[score]
    proba = np.asarray(proba, np.float64)
    y = np.asarray(y, np.int64)
    n, k = proba.shape
    if n == 0 or k < 2:
        return np.zeros(k)
    logp = np.log(np.clip(proba, 1e-12, None))
    bias = np.zeros(k)
    best = fn(y, logp.argmax(1), k)
    present = set(np.unique(y).tolist())
    for _ in range(passes):
        improved = False
        for c in range(1, k):
            if c not in present:
                continue
            keep = bias[c]
            for v in sorted(grid, key=abs):  # ties keep the smaller |bias|
                bias[c] = v
                s = fn(y, (logp + bias).argmax(1), k)
                if s > best + 1e-12:
                    best, keep, improved = s, v, True
            bias[c] = keep
        if not improved:
            break
    return bias


# ---- multi-label thresholds and the "other" reject rule (used by ml.heads and callers)


def tune_tag_thresholds(oof: np.ndarray | None, Y: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Per-tag threshold maximising out-of-fold F1, shrunk toward 0.5; 0.5 for tags with too
    little evidence (see MIN_EXAMPLES_FOR_THRESHOLD). ``known`` (n, k) bool: only those
    entries count (a label made before its tag existed says nothing about it)."""
    k = Y.shape[1]
    thresholds = np.full(k, 0.5)
    if oof is None:
        return thresholds
    ok = ~np.isnan(oof).any(axis=1)
    grid = np.linspace(0.02, 0.98, 49)
    for j in range(k):
        rows = ok if known is None else ok & known[:, j]
        yj, pj = Y[rows, j] > 0, oof[rows, j]
        m = min(int(yj.sum()), int((~yj).sum()))
        if m < MIN_EXAMPLES_FOR_THRESHOLD:
            continue
        pred = pj[None, :] >= grid[:, None]
        tp = (pred & yj).sum(axis=1)
        f1 = 2 * tp / np.maximum(pred.sum(axis=1) + yj.sum(), 1)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        # among equally good thresholds take the middle one: the most robust to drift
        thresholds[j] = 0.5 + m / (m + SHRINK_EXAMPLES) * (grid[best[len(best) // 2]] - 0.5)
    return thresholds


def reject_threshold(P_val: np.ndarray, y_val: np.ndarray, other_index: int) -> float:
    """Top-1 probability below which predicting ``other_index`` maximises validation accuracy.

    Rule (see ``apply_reject``): predict argmax unless max prob < threshold, then "other".
    Returns 0.0 (never reject) when rejecting does not help; among equally good cuts the lowest
    wins so the head keeps as many of its own answers as possible.
    """
    P_val = np.asarray(P_val, dtype=np.float64)
    y_val = np.asarray(y_val)
    if len(y_val) == 0:
        return 0.0
    conf = P_val.max(axis=1)
    order = np.argsort(conf, kind="stable")
    c = conf[order]
    kept_right = (P_val.argmax(axis=1) == y_val)[order]  # right answer if not rejected
    rejected_right = (y_val == other_index)[order]  # right answer if rejected
    # gain[i] = accuracy change (in items) from rejecting the i+1 least confident items
    gain = np.cumsum(rejected_right.astype(int) - kept_right.astype(int))
    # a threshold cannot separate equal confidences: only cut where the next one is larger
    valid = np.append(c[1:] > c[:-1], True)
    gain = np.where(valid, gain, np.iinfo(np.int64).min)
    i = int(np.argmax(gain))  # first (lowest) best cut
    if gain[i] <= 0:
        return 0.0
    if i + 1 < len(c):
        return float((c[i] + c[i + 1]) / 2)  # midway to the first item that is kept
    return float(np.nextafter(c[i], np.inf))  # reject everything


def apply_reject(P: np.ndarray, threshold: float, other_index: int) -> np.ndarray:
    """argmax predictions with low-confidence rows replaced by ``other_index``."""
    P = np.asarray(P)
    pred = P.argmax(axis=1)
    pred[P.max(axis=1) < threshold] = other_index
    return pred
