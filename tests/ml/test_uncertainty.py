import numpy as np
import pytest

from ml.uncertainty import entropy, least_confidence, margin, multilabel_uncertainty, uncertainty_score


def _random_proba(n: int, k: int, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(n, k)) * 3
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_entropy_extremes_and_scipy_reference():
    P = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    h = entropy(P)
    assert h[0] == 0.0
    assert h[1] == pytest.approx(1.0)
    assert h[2] == pytest.approx(np.log(2) / np.log(3))
    R = _random_proba(50, 7)
    ref = -(R * np.log(R)).sum(axis=1) / np.log(7)
    np.testing.assert_allclose(entropy(R), ref, rtol=1e-10)


def test_margin_and_least_confidence():
    P = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(margin(P), [0.5, 0.0, 1.0])
    np.testing.assert_allclose(least_confidence(P), [0.3, 0.6, 0.0])
    R = _random_proba(40, 5, seed=1)
    s = np.sort(R, axis=1)
    np.testing.assert_allclose(margin(R), s[:, -1] - s[:, -2])


def test_k1_and_k2_and_zeros_are_finite():
    one = np.ones((4, 1))
    assert np.all(entropy(one) == 0)
    assert np.all(margin(one) == 1)
    assert np.all(uncertainty_score(one) == 0)
    two = np.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    np.testing.assert_allclose(entropy(two)[:2], [1.0, 0.0])
    np.testing.assert_allclose(uncertainty_score(two), [1.0, 0.0, 0.2])
    zeros = np.zeros((3, 4))
    for f in (entropy, margin, least_confidence, uncertainty_score):
        assert np.isfinite(f(zeros)).all()
    assert np.isfinite(multilabel_uncertainty(zeros, np.full(4, 0.3))).all()


def test_uncertainty_score_is_one_minus_margin_in_unit_range():
    R = _random_proba(200, 6, seed=2)
    u = uncertainty_score(R)
    assert u.min() >= 0 and u.max() <= 1
    np.testing.assert_allclose(u, 1 - margin(R))
    # sorting key: the row that is closest to a tie is reviewed first
    P = np.array([[0.9, 0.05, 0.05], [0.45, 0.44, 0.11], [0.6, 0.3, 0.1]])
    assert list(np.argsort(-uncertainty_score(P))) == [1, 2, 0]


def test_multilabel_uncertainty_relative_to_thresholds():
    t = np.array([0.2, 0.5, 0.8])
    P = np.array(
        [
            [0.2, 0.0, 0.0],  # tag 0 exactly on its threshold
            [0.0, 0.0, 1.0],  # every tag as far from its threshold as possible
            [0.6, 0.0, 0.0],  # halfway between 0.2 and 1.0 on the positive side
            [0.0, 0.25, 0.0],  # halfway between 0 and 0.5 on the negative side
        ]
    )
    u = multilabel_uncertainty(P, t)
    np.testing.assert_allclose(u, [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(uncertainty_score(P, multilabel=True, thresholds=t), u)
    # without thresholds 0.5 is used for every tag
    np.testing.assert_allclose(uncertainty_score(np.array([[0.5, 0.0], [0.75, 1.0]]), multilabel=True), [1.0, 0.5])


def test_multilabel_threshold_at_bounds_is_nan_free():
    P = np.array([[0.0, 1.0], [0.3, 0.7]])
    u = multilabel_uncertainty(P, np.array([0.0, 1.0]))
    assert np.isfinite(u).all() and u.min() >= 0 and u.max() <= 1
    assert u[0] == 1.0  # p == t == 0 sits on the threshold


def test_rejects_non_matrix():
    with pytest.raises(ValueError):
        entropy(np.array([0.5, 0.5]))
