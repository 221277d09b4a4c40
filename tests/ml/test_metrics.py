import json

import numpy as np
import pytest
from sklearn import metrics as skm

from ml.metrics import (
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    macro_f1_ci,
    multilabel_metrics,
    top_k_accuracy,
    wilson_ci,
)


def _random_case(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k)) * 2
    z[np.arange(n), y] += 1.5  # better than chance, not perfect
    P = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return y, P


def test_wilson_ci_known_values():
    lo, hi = wilson_ci(81, 100)
    assert lo == pytest.approx(0.7222, abs=1e-4) and hi == pytest.approx(0.8749, abs=1e-4)
    assert wilson_ci(0, 0) == (0.0, 1.0)
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and 0.69 < lo < 0.73
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.31


@pytest.mark.parametrize("seed,k", [(0, 3), (1, 7), (2, 12)])
def test_matches_sklearn_on_random_data(seed, k):
    y, P = _random_case(300, k, seed)
    pred = P.argmax(axis=1)
    labels = list(range(k))
    np.testing.assert_array_equal(confusion_matrix(y, pred, k), skm.confusion_matrix(y, pred, labels=labels))
    assert balanced_accuracy(y, pred, k) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(y, pred, k) == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    for top in (1, 3):
        assert top_k_accuracy(y, P, top) == pytest.approx(skm.top_k_accuracy_score(y, P, k=top, labels=labels))
    m = classification_metrics(y, P, [f"c{i}" for i in range(k)])
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i in range(k):
        got = m["per_class"][f"c{i}"]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((pr[i], rc[i], f1[i], sup[i]))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


def test_absent_and_never_predicted_classes_follow_sklearn_label_set():
    # 5 classes; class 3 never occurs anywhere; class 4 is predicted but never true;
    # class 2 is true but never predicted
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    pred = np.array([0, 1, 1, 1, 0, 4, 0, 4])
    P = np.eye(5)[pred] * 0.9 + 0.02
    m = classification_metrics(y, P, ["a", "b", "c", "d", "e"])
    # macro-F1 over labels in y_true OR y_pred = sklearn's default label set {0,1,2,4}
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=[0, 1, 2, 4], average="macro", zero_division=0))
    assert m["macro_f1_classes"] == 4
    # balanced accuracy averages recall over classes present in y_true only
    with pytest.warns(UserWarning):  # sklearn warns about class 4 being predicted only
        ref = skm.balanced_accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx(ref)
    assert m["balanced_accuracy_classes"] == 3
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0,
                                    "predicted": 0}
    assert m["per_class"]["e"]["precision"] == 0.0 and m["per_class"]["c"]["recall"] == 0.0


def test_classification_metrics_hand_made_and_json():
    y = np.array([0, 0, 1, 2])
    P = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]])
    m = classification_metrics(y, P, ["x", "y", "z"])
    expected_keys = {"n", "accuracy", "accuracy_ci95", "top3_accuracy", "top3_ci95", "balanced_accuracy",
                     "macro_f1", "per_class", "confusion", "labels", "ece"}  # fmt: skip
    assert expected_keys <= set(m)
    assert m["n"] == 4 and m["accuracy"] == 0.5
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["top3_accuracy"] == 1.0
    assert m["labels"] == ["x", "y", "z"]
    assert m["accuracy_ci95"] == pytest.approx(list(wilson_ci(2, 4)))
    # ECE by hand: each confidence (.7 right, .6 wrong, .8 right, .5 wrong) has its own bin
    assert m["ece"] == pytest.approx((0.5 + 0.6 + 0.3 + 0.2) / 4)
    assert json.loads(json.dumps(m)) == m  # plain JSON-able types


def test_ece_reference_implementation():
    y, P = _random_case(500, 4, seed=5)
    conf, correct = P.max(1), (P.argmax(1) == y)
    edges = np.linspace(0, 1, 16)
    ref = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ref += inb.mean() * abs(correct[inb].mean() - conf[inb].mean())
    assert expected_calibration_error(y, P) == pytest.approx(ref)
    # perfectly calibrated by construction: confidence 1 and always right
    assert expected_calibration_error(np.array([0, 1]), np.eye(2)) == 0.0


def test_macro_f1_interval_resamples_like_scikit_learn_on_each_draw_and_narrows_with_more_data():
    y, P = _random_case(300, 5, seed=4)
    y[y == 3] = 0  # a class absent from the truth, still predicted now and then
    cm = np.array(confusion_matrix(y, P.argmax(1), 5))
    lo, hi = macro_f1_ci(cm, reps=50, seed=7)
    # the same resamples, scored one by one by scikit-learn over the classes each one holds
    draws = np.random.default_rng(7).multinomial(cm.sum(), (cm / cm.sum()).ravel(), size=50).reshape(50, 5, 5)
    ref = []
    for d in draws:
        t, p = np.nonzero(d)
        yt, yp = np.repeat(t, d[t, p]), np.repeat(p, d[t, p])
        ref.append(skm.f1_score(yt, yp, labels=np.union1d(yt, yp), average="macro", zero_division=0))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))
    point = classification_metrics(y, P, list("abcde"))
    assert lo < point["macro_f1"] < hi
    big_lo, big_hi = macro_f1_ci(cm * 4)
    assert big_hi - big_lo < 0.7 * (hi - lo)
    assert macro_f1_ci(np.zeros((3, 3))) is None


def test_empty_input():
    m = classification_metrics(np.zeros(0, dtype=int), np.zeros((0, 3)), ["a", "b", "c"])
    assert m["n"] == 0 and m["accuracy"] == 0.0 and m["accuracy_ci95"] == [0.0, 1.0]
    assert json.dumps(m)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.zeros((2, 3)), ["a", "b"])


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    Y = (rng.random((200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.0, 0.4]).astype(int)
    P = np.clip(Y * 0.6 + rng.random((200, 6)) * 0.5, 0, 1)
    t = np.array([0.5, 0.6, 0.4, 0.5, 0.95, 0.7])
    pred = (P >= t).astype(int)
    labels = [f"t{i}" for i in range(6)]
    m = multilabel_metrics(Y, P, t, labels)
    assert m["micro_f1"] == pytest.approx(skm.f1_score(Y, pred, average="micro", zero_division=0))
    seen = [j for j in range(6) if Y[:, j].any() or pred[:, j].any()]
    assert len(seen) < 6  # tag 4 has no positives and is never predicted
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, pred, labels=seen, average="macro", zero_division=0))
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(Y, pred))
    pr, rc, f1, sup = skm.precision_recall_fscore_support(Y, pred, zero_division=0)
    for j, name in enumerate(labels):
        got = m["per_tag"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((pr[j], rc[j], f1[j], sup[j]))
    assert json.loads(json.dumps(m)) == m
