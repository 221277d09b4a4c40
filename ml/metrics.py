"""Evaluation metrics for heads, as plain JSON-able Python values.

Semantics chosen to match scikit-learn (the tests compare against it):
- precision / recall / F1 use ``zero_division=0``;
- ``macro_f1`` averages over the classes that occur in ``y_true`` OR in the predictions, i.e.
  ``f1_score(y_true, y_pred, average="macro")`` with scikit-learn's default label set. A
  project with 30 tags of which only 5 are in a small test set should not have its macro-F1
  dragged down by 25 classes that nobody asked about; a class that is *predicted* but never
  true still counts (with F1 = 0) because those are real mistakes;
- ``balanced_accuracy`` = mean recall over classes present in ``y_true``
  (``balanced_accuracy_score``);
- top-k ties are broken towards the lower class index, like ``argmax``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "wilson_ci",
    "confusion_matrix",
    "precision_recall_f1",
    "top_k_accuracy",
    "balanced_accuracy",
    "macro_f1",
    "expected_calibration_error",
    "classification_metrics",
    "multilabel_metrics",
]

ECE_BINS = 15


def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0 (nothing is known).

    Preferred over the normal approximation because it stays inside [0, 1] and is sensible
    for the small test sets and accuracies near 100 % that labeling projects have.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(k, k) int64 counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=np.asarray(den) > 0)


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = _safe_div(tp, n_pred)
    recall = _safe_div(tp, n_true)
    # F1 written on counts (2tp / (pred + true)) is exactly scikit-learn's and avoids 0/0
    f1 = _safe_div(2 * np.asarray(tp), np.asarray(n_pred) + np.asarray(n_true))
    return precision, recall, f1


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, f1, support) from a confusion matrix."""
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision, recall, f1 = _prf(tp, cm.sum(axis=0), support)
    return precision, recall, f1, support


def macro_f1_ci(cm: np.ndarray, reps: int = 400, seed: int = 0) -> tuple[float, float] | None:
    """95 % bootstrap interval of macro-F1 from a confusion matrix, which holds the held-out
    (true, predicted) pairs exactly: ``reps`` resamples with replacement, all at once (F1 =
    2 tp / (predicted + true); macro over the classes present in each resample). None for an
    empty matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    n, k = int(cm.sum()), cm.shape[0]
    if n == 0:
        return None
    draws = np.random.default_rng(seed).multinomial(n, (cm / n).ravel(), size=reps).reshape(reps, k, k)
    tp = np.diagonal(draws, axis1=1, axis2=2)
    both = draws.sum(axis=1) + draws.sum(axis=2)  # predicted + true, per class
    f1 = _safe_div(2 * tp, both)
    seen = both > 0
    scores = _safe_div((f1 * seen).sum(axis=1), seen.sum(axis=1))
    lo, hi = np.percentile(scores, [2.5, 97.5])
    return float(lo), float(hi)


def per_label_log_loss(P: np.ndarray, y: np.ndarray, multilabel: bool = False, eps: float = 1e-6,
                       known: np.ndarray | None = None) -> np.ndarray:
    """(n,) log-loss of each held-out row: -log P(true tag); multi-label: the sum over tags of
    the binary cross-entropy (y (n, k) of {0, 1}), over the ``known`` (n, k) entries only when
    given. A non-finite probability (a diverged model) counts as the worst answer
    (ml.promotion: such a model is never promoted over a working one).
    Probabilities are clipped to [eps, 1 - eps]."""
    P = np.asarray(P, dtype=np.float64)
    finite = np.isfinite(P)
    if multilabel:
        Y = np.asarray(y) > 0
        P = np.clip(np.where(finite, P, ~Y), eps, 1 - eps)  # worst: 0 for a true tag, 1 for a false one
        loss = -np.where(Y, np.log(P), np.log1p(-P))
        return (loss if known is None else np.where(known, loss, 0.0)).sum(axis=1)
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    P = np.clip(np.where(finite, P, 0.0), eps, 1 - eps)
    return -np.log(P[np.arange(len(y)), y])


def _top_k_hits(y_true: np.ndarray, P: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-np.asarray(P), axis=1, kind="stable")[:, :k]
    return (top == np.asarray(y_true, dtype=np.int64)[:, None]).any(axis=1)


def top_k_accuracy(y_true: np.ndarray, P: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k highest probabilities."""
    return float(_top_k_hits(y_true, P, k).mean()) if len(y_true) else 0.0


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float((np.diag(cm)[present] / support[present]).mean())


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over classes present in y_true or y_pred (see module docstring)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    _, _, f1, _ = precision_recall_f1(cm)
    seen = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(f1[seen].mean()) if seen.any() else 0.0


def expected_calibration_error(y_true: np.ndarray, P: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: equal-width confidence bins (lo, hi], weighted |accuracy - confidence|."""
    y_true = np.asarray(y_true, dtype=np.int64)
    P = np.asarray(P, dtype=np.float64)
    if len(y_true) == 0:
        return 0.0
    conf = P.max(axis=1)
    correct = (P.argmax(axis=1) == y_true).astype(np.float64)
    # bin b holds conf in (b/n_bins, (b+1)/n_bins]; conf == 0 goes to the first bin
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    # per bin: |sum(acc) - sum(conf)| / n == (n_b / n) * |mean acc - mean conf|
    gap = np.bincount(bins, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y_true))


def _per_label(labels: Sequence[str], precision, recall, f1, support, predicted) -> dict[str, dict[str, float]]:
    # "predicted" beside "support": a 0 precision of a label never predicted (or 0 recall of one
    # never true) is no evidence, and a report must be able to show it as such, not as a zero
    return {
        str(name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
        }
        for i, name in enumerate(labels)
    }


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Single-label report (see docs/ml-contract.md). Predictions are argmax of ``proba``.

    Extra keys beyond the contract: ``balanced_accuracy_classes`` (how many classes it averages)
    and ``macro_f1_classes`` (idem), so a UI can say what the averages cover.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    P = np.asarray(proba, dtype=np.float64)
    k = len(labels)
    if P.shape != (len(y_true), k):
        raise ValueError(f"proba must have shape {(len(y_true), k)}, got {P.shape}")
    n = len(y_true)
    y_pred = P.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, k)
    precision, recall, f1, support = precision_recall_f1(cm)
    n_correct = int(np.trace(cm))
    n_top3 = int(_top_k_hits(y_true, P, 3).sum())
    return {
        "n": n,
        "accuracy": n_correct / n if n else 0.0,
        "accuracy_ci95": list(wilson_ci(n_correct, n)),
        "top3_accuracy": n_top3 / n if n else 0.0,
        "top3_ci95": list(wilson_ci(n_top3, n)),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, k),
        "balanced_accuracy_classes": int((support > 0).sum()),
        "macro_f1": macro_f1(y_true, y_pred, k),
        "macro_f1_classes": int(((cm.sum(axis=0) + support) > 0).sum()),
        "per_class": _per_label(labels, precision, recall, f1, support, cm.sum(axis=0)),
        "confusion": cm.tolist(),
        "labels": [str(x) for x in labels],
        "ece": expected_calibration_error(y_true, P),
    }


def multilabel_metrics(
    Y_true: np.ndarray, P: np.ndarray, thresholds: np.ndarray | float | None, labels: Sequence[str],
    known: np.ndarray | None = None,
) -> dict[str, Any]:
    """Multi-label report: a tag is predicted when P >= its threshold (0.5 if None). Entries
    not ``known`` ((n, k) bool; a label made before its tag existed) count for nothing: not
    as a miss, a false positive, or a right answer.

    ``macro_f1`` averages over tags that are true or predicted at least once, the multi-label
    counterpart of the single-label rule (``f1_score(average="macro", labels=those tags)``);
    ``micro_f1`` pools all tag decisions; ``subset_accuracy`` = every tag of the row right.
    """
    Y = np.asarray(Y_true) > 0
    P = np.asarray(P, dtype=np.float64)
    if Y.shape != P.shape or P.shape[1] != len(labels):
        raise ValueError(f"Y_true {Y.shape} and P {P.shape} must both be (n, {len(labels)})")
    t = 0.5 if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    K = np.ones(Y.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool) | Y
    pred = P >= t
    tp = (pred & Y).sum(axis=0)
    n_pred, support = (pred & K).sum(axis=0), Y.sum(axis=0)
    precision, recall, f1 = _prf(tp, n_pred, support)
    seen = (n_pred + support) > 0
    _, _, micro = _prf(tp.sum(), n_pred.sum(), support.sum())
    n = len(Y)
    return {
        "n": n,
        "micro_f1": float(micro),
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "macro_f1_tags": int(seen.sum()),
        "subset_accuracy": float(((pred == Y) | ~K).all(axis=1).mean()) if n else 0.0,
        "hamming_loss": float(((pred != Y) & K).sum() / K.sum()) if K.any() else 0.0,
        "per_tag": _per_label(labels, precision, recall, f1, support, n_pred),
        "labels": [str(x) for x in labels],
    }
