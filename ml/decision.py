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
from scipy.stats import binom

from ml.metrics import balanced_accuracy, macro_f1

# Multi-label thresholds (``tune_tag_thresholds``), measured by bench/thresholds.py on real
# embeddings (docs/ml-results.md "Multi-label thresholds"). A class-balanced sigmoid's 0.5 is
# already the equal-prior cut: on shoes + FlickrLogos the test-F1-best cut of the final head
# scatters around 0.5 (+-0.05-0.15 from draw to draw), and out-of-fold F1 maxima chased that
# noise (8 tags, 300-600 labels: -0.004 micro-F1 against 0.5 in 23 of 24 draws, even shrunk).
# So a cut moves only on evidence: MIN_EXAMPLES_FOR_THRESHOLD known positives and negatives,
# and the out-of-fold rows the move puts on the other side of the cut must raise F1 with a
# one-sided binomial p < GAIN_ALPHA (strict: the cut was picked on those very rows); then it
# moves m / (m + SHRINK_EXAMPLES) of the way (m the smaller count). Balanced heads: equal to
# 0.5 at every size (24 draws); unweighted ones, where 0.5 is the wrong cut: +0.002 to +0.008.
MIN_EXAMPLES_FOR_THRESHOLD = 20
GAIN_ALPHA = 0.001
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


def tunable_tags(Y: np.ndarray, known: np.ndarray | None = None,
                 min_examples: int = MIN_EXAMPLES_FOR_THRESHOLD) -> np.ndarray:
    """(k,) bool: tags with ``min_examples`` known positives and known negatives in ``Y``."""
    Y = np.asarray(Y) > 0
    K = np.ones(Y.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool) | Y
    return np.minimum(Y.sum(axis=0), (K & ~Y).sum(axis=0)) >= min_examples


def f1_gain_p_value(p: np.ndarray, y: np.ndarray, cut: float, base: float = 0.5) -> float:
    """One-sided binomial p-value that predicting ``p >= cut`` instead of ``p >= base`` raises F1.

    Only the rows between the two cuts change sides. Lowering the cut turns their positives into
    hits and their negatives into false alarms, and F1 rises exactly when the share of positives
    among them beats F1(base) / 2 (F1 = 2 TP / (2 TP + FP + FN)); raising it, exactly when that
    share is below F1(base) / 2. The null is "that share is F1(base) / 2": no gain."""
    p, y = np.asarray(p, np.float64), np.asarray(y) > 0
    pred = p >= base
    f1 = 2 * (pred & y).sum() / max(pred.sum() + y.sum(), 1)
    moved = (p >= min(cut, base)) & (p < max(cut, base))
    c, a = int(moved.sum()), int((moved & y).sum())
    if c == 0:
        return 1.0
    return float(binom.sf(a - 1, c, f1 / 2) if cut < base else binom.cdf(a, c, f1 / 2))


def tune_tag_thresholds(
    oof: np.ndarray | None, Y: np.ndarray, known: np.ndarray | None = None, *,
    min_examples: int = MIN_EXAMPLES_FOR_THRESHOLD, alpha: float | None = GAIN_ALPHA,
    shrink: float = SHRINK_EXAMPLES,
) -> np.ndarray:  # fmt: skip
    """Per-tag thresholds (k,) from out-of-fold probabilities ``oof`` (n, k; NaN = not scored):
    the F1-best cut where it beats 0.5 with p < ``alpha`` (``f1_gain_p_value``; None: always),
    moved m / (m + ``shrink``) of the way from 0.5; 0.5 for tags with fewer than ``min_examples``
    positives or negatives. ``known`` (n, k) bool: only those entries count (a label made before
    its tag existed says nothing about it). The keywords exist for bench/thresholds.py, which
    compares this rule with the earlier ones."""
    k = Y.shape[1]
    thresholds = np.full(k, 0.5)
    if oof is None:
        return thresholds
    grid = np.linspace(0.02, 0.98, 49)
    for j in range(k):
        rows = ~np.isnan(oof[:, j]) if known is None else ~np.isnan(oof[:, j]) & known[:, j]
        yj, pj = Y[rows, j] > 0, oof[rows, j]
        m = min(int(yj.sum()), int((~yj).sum()))
        if m < min_examples:
            continue
        pred = pj[None, :] >= grid[:, None]
        tp = (pred & yj).sum(axis=1)
        f1 = 2 * tp / np.maximum(pred.sum(axis=1) + yj.sum(), 1)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        # among equally good thresholds take the middle one: the most robust to drift
        cut = grid[best[len(best) // 2]]
        if alpha is not None and f1_gain_p_value(pj, yj, cut) >= alpha:
            continue
        thresholds[j] = 0.5 + m / (m + shrink) * (cut - 0.5)
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
