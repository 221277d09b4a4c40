import io
import time

import numpy as np
import pytest

from ml.decision import apply_reject, reject_threshold
from ml.heads import LinearHead, default_l2, out_of_fold_proba, stratified_folds, train_head
from ml.metrics import multilabel_metrics
from tests.ml._embeddings import shoes_embeddings


@pytest.fixture(scope="module")
def shoes():
    return shoes_embeddings()


def _blobs(n: int, k: int, d: int = 32, seed: int = 0, spread: float = 2.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * spread
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_shoes_accuracy_beats_baseline_and_majority(shoes):
    t0 = time.perf_counter()
    head = train_head(shoes.X_train, shoes.y_train, len(shoes.classes), seed=0)
    elapsed = time.perf_counter() - t0
    acc = float((head.predict(shoes.X_test) == shoes.y_test).mean())
    majority = np.bincount(shoes.y_test).max() / len(shoes.y_test)
    print(f"shoes head: test accuracy {acc:.3f} (majority {majority:.3f}), l2={head.l2:.3g}, {elapsed:.2f}s")
    assert acc >= 0.80
    assert acc > majority + 0.3
    P = head.predict_proba(shoes.X_test)
    assert P.shape == (len(shoes.y_test), 3)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)


def test_deterministic_for_a_seed(shoes):
    a = train_head(shoes.X_train[:300], shoes.y_train[:300], 3, seed=1)
    b = train_head(shoes.X_train[:300], shoes.y_train[:300], 3, seed=1)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.predict_proba(shoes.X_test), b.predict_proba(shoes.X_test))


def test_classes_without_examples_get_zero_probability():
    X, y = _blobs(200, 3, seed=1)
    y_big = np.where(y == 2, 4, y)  # classes 2 and 3 (of 5) have no examples
    head = train_head(X, y_big, 5)
    P = head.predict_proba(X)
    assert np.all(P[:, [2, 3]] == 0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)
    assert (head.predict(X) == y_big).mean() > 0.95
    assert set(np.unique(head.predict(X))) <= {0, 1, 4}


def test_single_known_class_predicts_it():
    X, _ = _blobs(20, 1, seed=2)
    head = train_head(X, np.full(20, 2), 4)
    P = head.predict_proba(X[:3])
    np.testing.assert_array_equal(P, np.tile([0.0, 0.0, 1.0, 0.0], (3, 1)))


def test_balanced_class_weight_raises_minority_recall(shoes):
    # keep only 15 adidas among ~470 others: unweighted training under-predicts adidas
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(shoes.y_train == 0), 15, replace=False),
                           np.flatnonzero(shoes.y_train != 0)])  # fmt: skip
    X, y = shoes.X_train[keep], shoes.y_train[keep]
    recall = {}
    for cw in ("balanced", None):
        pred = train_head(X, y, 3, class_weight=cw, l2=0.2).predict(shoes.X_test)
        recall[cw] = (pred[shoes.y_test == 0] == 0).mean()
    assert recall["balanced"] > recall[None]


def test_regularisation_is_chosen_by_cv_only_with_enough_data(shoes):
    small = train_head(shoes.X_train[::30], shoes.y_train[::30], 3)  # 24 samples
    assert small.l2 == default_l2(24)
    big = train_head(shoes.X_train, shoes.y_train, 3)
    assert any(big.l2 == pytest.approx(default_l2(711) * f) for f in (0.2, 1.0, 5.0))


def test_save_load_roundtrip_without_pickle(tmp_path, shoes):
    head = train_head(shoes.X_train, shoes.y_train, 3)
    path = tmp_path / "head.model"  # not .npz: the name must be kept as given
    head.save(path)
    assert path.exists() and not (tmp_path / "head.model.npz").exists()
    with np.load(path, allow_pickle=False) as z:
        assert int(z["format_version"]) == 1
    loaded = LinearHead.load(path)
    np.testing.assert_allclose(loaded.predict_proba(shoes.X_test), head.predict_proba(shoes.X_test), rtol=1e-6)
    assert loaded.multilabel is False and loaded.thresholds is None and loaded.l2 == head.l2


def test_load_rejects_future_format():
    head = train_head(*_blobs(60, 2), 2)
    buf = io.BytesIO()
    head.save(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        arrays = dict(z)
    arrays["format_version"] = np.int64(99)
    bad = io.BytesIO()
    np.savez(bad, **arrays)
    bad.seek(0)
    with pytest.raises(ValueError, match="unsupported"):
        LinearHead.load(bad)


def _shoe_tags(y: np.ndarray) -> np.ndarray:
    # tag 0: nike; tag 1: not converse ("sports brand"); tag 2: never present
    return np.stack([y == 2, y != 1, np.zeros_like(y, dtype=bool)], axis=1).astype(int)


def test_multilabel_head_on_shoes(tmp_path, shoes):
    Y = _shoe_tags(shoes.y_train)
    Y_rare = np.zeros((len(Y), 1), dtype=int)
    Y_rare[[0, 300, 600]] = 1  # 3 positives: too few to tune a threshold
    Y = np.hstack([Y, Y_rare])
    head = train_head(shoes.X_train, Y, 4, multilabel=True)
    assert head.multilabel and head.thresholds.shape == (4,)
    assert head.thresholds[2] == 0.5 and head.thresholds[3] == 0.5
    assert 0.02 <= head.thresholds[0] <= 0.98 and 0.02 <= head.thresholds[1] <= 0.98
    P = head.predict_proba(shoes.X_test)
    assert np.all(P[:, 2] == 0)  # a tag nobody ever used is never suggested
    m = multilabel_metrics(np.hstack([_shoe_tags(shoes.y_test), np.zeros((len(P), 1), int)]), P, head.thresholds,
                           ["nike", "sporty", "never", "rare"])  # fmt: skip
    print("multilabel shoes:", {k: round(v["f1"], 3) for k, v in m["per_tag"].items()}, "micro", round(m["micro_f1"], 3))
    assert m["per_tag"]["sporty"]["f1"] >= 0.85
    assert m["per_tag"]["nike"]["f1"] >= 0.6
    path = tmp_path / "ml.npz"
    head.save(path)
    loaded = LinearHead.load(path)
    np.testing.assert_array_equal(loaded.thresholds, head.thresholds)
    np.testing.assert_array_equal(loaded.predict(shoes.X_test), head.predict(shoes.X_test))


def test_multilabel_thresholds_are_tuned_for_f1_on_a_rare_tag():
    # an unweighted sigmoid for a rare (~15 %) overlapping tag rarely reaches 0.5: the F1-best
    # cut is lower, and the out-of-fold tuning has to find it
    rng = np.random.default_rng(4)

    def make(n):
        X = rng.normal(size=(n, 16)).astype(np.float32)
        score = X[:, 0] + 0.8 * rng.normal(size=n)
        return X, np.stack([score > 1.3, X[:, 1] > 0], axis=1).astype(int)

    X, Y = make(600)
    head = train_head(X, Y, 2, multilabel=True, class_weight=None)
    assert head.thresholds[0] < 0.45
    Xt, Yt = make(4000)
    P = head.predict_proba(Xt)
    tuned = multilabel_metrics(Yt, P, head.thresholds, ["a", "b"])["per_tag"]["a"]["f1"]
    fixed = multilabel_metrics(Yt, P, 0.5, ["a", "b"])["per_tag"]["a"]["f1"]
    assert tuned > fixed + 0.1


def test_stratified_folds_spread_each_class():
    y = np.array([0] * 10 + [1] * 5 + [2] * 2)
    folds = stratified_folds(y, 5, seed=0)
    for c in (0, 1):
        assert np.bincount(folds[y == c], minlength=5).tolist() == ([2] * 5 if c == 0 else [1] * 5)
    assert len(set(folds[y == 2])) == 2
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1


def test_stratified_folds_keep_each_group_in_one_fold_and_still_spread_classes():
    y_img = np.array([0] * 10 + [1] * 5)
    groups = np.repeat(np.arange(15), 4)  # 4 augmented views per image
    folds = stratified_folds(np.repeat(y_img, 4), 5, seed=0, groups=groups).reshape(15, 4)
    assert (folds == folds[:, :1]).all()
    assert np.bincount(folds[y_img == 1, 0], minlength=5).tolist() == [1] * 5


def _noise_views(n: int = 120, views: int = 8, d: int = 64, k: int = 4):
    """n images with labels that carry no signal, each seen as `views` near-identical copies."""
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(n, d)), views, axis=0) + 0.05 * rng.normal(size=(n * views, d))
    return X.astype(np.float32), np.repeat(rng.integers(0, k, n), views), np.repeat(np.arange(n), views), k


def test_grouped_cv_does_not_reward_memorising_views_of_one_image():
    X, y, groups, k = _noise_views()
    grid = [default_l2(len(y)) * f for f in (0.2, 1.0, 5.0)]
    # Views of one image split across folds make memorising look like generalising: weakest L2.
    assert train_head(X, y, k).l2 == pytest.approx(min(grid))
    assert train_head(X, y, k, groups=groups).l2 == pytest.approx(max(grid))


def test_out_of_fold_is_honest(shoes):
    P = out_of_fold_proba(shoes.X_train, shoes.y_train, 3, n_folds=5, l2=0.14)
    oof_acc = (P.argmax(1) == shoes.y_train).mean()
    train_acc = (train_head(shoes.X_train, shoes.y_train, 3, l2=0.14).predict(shoes.X_train) == shoes.y_train).mean()
    assert train_acc > 0.95  # a head that saw the item would have memorised it
    assert 0.7 < oof_acc < 0.9  # out-of-fold looks like test accuracy (~0.8), not training


def test_reject_threshold_hand_made():
    P = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0], [0.8, 0.2, 0.0], [0.45, 0.3, 0.25]])
    y = np.array([0, 2, 2, 1, 0])  # class 2 = "other"
    # sorted by confidence, rejecting gains +1 (0.40), -1 (0.45), +1 (0.50), 0 (0.80), -1 (0.90):
    # the best total (+1) is first reached by rejecting only the 0.40 row -> cut midway to 0.45
    t = reject_threshold(P, y, other_index=2)
    assert t == pytest.approx(0.425)
    assert (apply_reject(P, t, 2) == y).sum() == 3  # instead of 2 without rejection
    assert reject_threshold(np.eye(3), np.arange(3), other_index=2) == 0.0  # nothing to gain
    # ties cannot be split: both 0.5 rows share one fate
    assert reject_threshold(np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [1, 0, 0]]), np.array([2, 2, 0]), 2) > 0.5


def test_reject_threshold_on_unknown_class(shoes):
    # the head knows adidas/converse only; nike plays "other" (index 2). The threshold is chosen
    # on training data (out-of-fold for known classes) and must pay off on the test split.
    known = shoes.y_train != 2
    head = train_head(shoes.X_train[known], shoes.y_train[known], 3)
    P_val = np.vstack([out_of_fold_proba(shoes.X_train[known], shoes.y_train[known], 3),
                       head.predict_proba(shoes.X_train[~known])])  # fmt: skip
    y_val = np.concatenate([shoes.y_train[known], shoes.y_train[~known]])
    t = reject_threshold(P_val, y_val, other_index=2)
    assert 0 < t < 1
    P = head.predict_proba(shoes.X_test)
    acc_reject = (apply_reject(P, t, 2) == shoes.y_test).mean()
    acc_plain = (P.argmax(1) == shoes.y_test).mean()
    print(f"reject threshold {t:.3f}: test accuracy {acc_plain:.3f} -> {acc_reject:.3f}")
    assert acc_reject >= acc_plain + 0.02  # measured 0.632 -> 0.675


def test_rejects_bad_input():
    X, y = _blobs(30, 2)
    with pytest.raises(ValueError):
        train_head(X, y + 5, 2)
    with pytest.raises(ValueError):
        train_head(X, y, 2, class_weight="auto")
    with pytest.raises(ValueError):
        train_head(X, np.zeros((30, 3)), 2, multilabel=True)
