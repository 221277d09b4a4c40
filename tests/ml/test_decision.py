"""ml.decision: per-class biases tuned on held-out probabilities."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from ml.decision import GRID, apply_bias, fit_class_bias


def _skewed_binary(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A rare positive class whose probabilities are systematically too low (a head trained
    on a different prior): argmax misses most positives, a lower threshold finds them."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(np.int64)
    p1 = np.clip(np.where(y == 1, rng.normal(0.35, 0.12, n), rng.normal(0.12, 0.08, n)), 0.001, 0.999)
    return np.stack([1 - p1, p1], axis=1), y


def test_binary_bias_is_the_best_threshold_on_the_grid():
    P, y = _skewed_binary()
    bias = fit_class_bias(P, y, "macro_f1")
    assert bias[0] == 0.0
    # brute force over the same grid: the fitted bias reaches the best macro-F1
    best = max(f1_score(y, (np.log(P) + [0, b]).argmax(1), average="macro") for b in GRID)
    got = f1_score(y, apply_bias(P, bias).argmax(1), average="macro")
    assert got == pytest.approx(best)
    assert got > f1_score(y, P.argmax(1), average="macro") + 0.05
    assert bias[1] > 0  # the rare class needed a push


def test_bias_for_balanced_accuracy_recovers_minority_classes():
    rng = np.random.default_rng(1)
    k, n = 4, 2000
    prior = np.array([0.85, 0.05, 0.05, 0.05])
    y = rng.choice(k, n, p=prior)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5
    logits += np.log(prior) * 1.5  # over-confident in the majority class
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    bias = fit_class_bias(P, y, "balanced_accuracy")
    before = balanced_accuracy_score(y, P.argmax(1))
    after = balanced_accuracy_score(y, apply_bias(P, bias).argmax(1))
    assert after > before + 0.1
    assert (bias[1:] > 0).all()


def test_a_perfect_rule_is_left_alone():
    P = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    y = np.array([0, 1, 2, 0])
    bias = fit_class_bias(P, y, "accuracy")
    assert np.array_equal(bias, np.zeros(3))
    assert np.allclose(apply_bias(P + 1e-12, bias), (P + 1e-12) / (P + 1e-12).sum(1, keepdims=True))


def test_classes_without_validation_samples_keep_zero_bias():
    P, y = _skewed_binary()
    P3 = np.concatenate([P * 0.9, np.full((len(P), 1), 0.1)], axis=1)  # class 2 never occurs
    bias = fit_class_bias(P3, y, "macro_f1")
    assert bias[2] == 0.0
    rows = apply_bias(P3, bias)
    assert np.allclose(rows.sum(1), 1.0)


def test_unknown_score_is_rejected():
    with pytest.raises(ValueError, match="unknown score 'f2'"):
        fit_class_bias(np.full((2, 2), 0.5), np.array([0, 1]), "f2")
