"""ml.promotion: refuse a retrained model only when the held-out labels show it worse."""
import numpy as np
import pytest
from sklearn.metrics import log_loss

from ml.heads import LinearHead, train_head
from ml.metrics import per_label_log_loss
from ml.promotion import compare
from tests.ml._embeddings import shoes_embeddings


def _head(X: np.ndarray, y: np.ndarray) -> LinearHead:
    return train_head(X, y, 3, seed=0)


@pytest.fixture(scope="module")
def shoes():
    return shoes_embeddings()


@pytest.fixture(scope="module")
def models(shoes):
    """The live model from 60 real labels and a retrain from 80 (the same 60 and 20 more)."""
    order = np.random.default_rng(0).permutation(len(shoes.y_train))
    live = _head(shoes.X_train[order[:60]], shoes.y_train[order[:60]])
    new = _head(shoes.X_train[order[:80]], shoes.y_train[order[:80]])
    return order, live.predict_proba(shoes.X_test), new.predict_proba(shoes.X_test)


def test_the_per_label_log_loss_averages_to_scikit_learns():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(4), 50)
    y = rng.integers(0, 4, 50)
    assert per_label_log_loss(P, y).mean() == pytest.approx(log_loss(y, P, labels=range(4)))
    # multi-label: each tag a binary decision, summed over the tags of a row
    Pm = rng.uniform(0.01, 0.99, (50, 4))
    Y = rng.integers(0, 2, (50, 4))
    by_tag = sum(log_loss(Y[:, j], Pm[:, j], labels=[0, 1]) for j in range(4))
    assert per_label_log_loss(Pm, Y, multilabel=True).mean() == pytest.approx(by_tag)


def test_an_identical_model_is_promoted():
    P = np.random.default_rng(1).dirichlet(np.ones(3), 20)
    y = P.argmax(1)
    verdict = compare(P, P, y)
    assert verdict.promote and verdict.p_worse == 1.0 and verdict.n == 20


def test_a_better_model_that_loses_a_few_of_13_held_out_photos_by_chance_is_still_promoted(shoes, models):
    _, P_live, P_new = models
    y = shoes.y_test
    # precondition: 20 more labels made a better model on all 114 test photos
    assert (P_new.argmax(1) == y).mean() >= (P_live.argmax(1) == y).mean() + 0.03
    refused_by_accuracy, promoted, promoted_there = 0, 0, 0
    for k in range(200):
        held = np.random.default_rng(100 + k).choice(len(y), 13, replace=False)
        lower = (P_new[held].argmax(1) == y[held]).mean() < (P_live[held].argmax(1) == y[held]).mean()
        ok = compare(P_new[held], P_live[held], y[held]).promote
        refused_by_accuracy += lower
        promoted += ok
        promoted_there += lower and ok
    # "held-out accuracy at least the live one's" would keep the worse model on these draws
    assert refused_by_accuracy >= 10
    assert promoted >= 0.95 * 200
    assert promoted_there >= 0.8 * refused_by_accuracy


def test_a_model_trained_with_a_third_of_its_labels_wrong_is_refused(shoes, models):
    order, _, P_good = models
    rng = np.random.default_rng(1)
    y_bad = shoes.y_train[order[:90]].copy()
    wrong = rng.random(90) < 0.3
    y_bad[wrong] = (y_bad[wrong] + rng.integers(1, 3, wrong.sum())) % 3
    P_bad = _head(shoes.X_train[order[:90]], y_bad).predict_proba(shoes.X_test)
    y = shoes.y_test
    assert (P_bad.argmax(1) == y).mean() < (P_good.argmax(1) == y).mean() - 0.05  # precondition
    for held in (np.random.default_rng(2).choice(len(y), 60, replace=False), np.arange(len(y))):
        verdict = compare(P_bad[held], P_good[held], y[held])
        assert not verdict.promote and verdict.p_worse < 0.05, verdict.describe()
        assert verdict.new_log_loss > verdict.live_log_loss
        assert "worse" in verdict.describe() and "not shown" not in verdict.describe()


def test_a_multi_label_model_that_guesses_is_refused_against_one_that_knows():
    rng = np.random.default_rng(3)
    Y = rng.integers(0, 2, (40, 5))
    knows = np.clip(Y * 0.8 + 0.1 + rng.normal(0, 0.05, Y.shape), 0.01, 0.99)
    guesses = rng.uniform(0.01, 0.99, Y.shape)
    assert not compare(guesses, knows, Y, multilabel=True).promote
    assert compare(knows, guesses, Y, multilabel=True).promote


def test_a_diverged_model_with_nan_probabilities_is_refused_and_replaced(shoes, models):
    _, P_live, _ = models
    y = shoes.y_test
    broken = P_live.copy()
    broken[::3] = np.nan  # a head whose training diverged on some inputs
    verdict = compare(broken, P_live, y)
    assert not verdict.promote and np.isfinite(verdict.new_log_loss) and verdict.p_worse < 0.05
    assert compare(P_live, broken, y).promote  # and a working retrain replaces such a live model
    Y = np.eye(3, dtype=int)[y]
    assert not compare(np.where(np.eye(3)[y] > 0, np.nan, 0.1), Y * 0.8 + 0.1, Y, multilabel=True).promote


def test_bad_arguments_are_named():
    P = np.full((5, 3), 1 / 3)
    y = np.zeros(5, dtype=int)
    with pytest.raises(ValueError, match="alpha"):
        compare(P, P, y, alpha=0)
    with pytest.raises(ValueError, match="rows"):
        compare(P, P[:4], y)
    with pytest.raises(ValueError, match="at least 2"):
        compare(P[:1], P[:1], y[:1])


def test_a_comparison_needs_min_holdout_labels_and_never_fewer_than_two(monkeypatch):
    from ml import promotion

    assert not promotion.can_compare(promotion.MIN_HOLDOUT - 1) and promotion.can_compare(promotion.MIN_HOLDOUT)
    monkeypatch.setattr(promotion, "MIN_HOLDOUT", 1)  # a deployment that compares on any holdout
    assert not promotion.can_compare(1) and promotion.can_compare(2)  # the paired test needs two rows


def test_a_tag_whose_only_labels_are_in_the_bucket_trains_on_them_and_the_others_stay_held_out():
    from ml import promotion

    bucket = np.array([True, False, True, True, True])
    y = np.array([0, 0, 1, 1, 0])  # class 1 only in the bucket; class 0 has a training row
    held, moved, untaught = promotion.holdout_split(bucket, y[:, None] == np.arange(3))
    assert held.tolist() == [True, False, False, False, True]
    assert moved.tolist() == [False, False, True, True, False] and untaught.tolist() == [False, True, False]


def test_near_duplicate_twins_stay_on_one_side_and_a_group_is_held_out_only_if_every_member_may_be():
    from ml import promotion

    bucket = np.array([True, True, True, False, True, False])
    y = np.array([0, 0, 1, 1, 0, 0])  # both classes have training rows: nothing moves for rule 3
    groups = np.array([7, 7, 9, 9, 4, 5])  # twins 0-1 (both may be held out), 2-3 (3 may not)
    held, moved, untaught = promotion.holdout_split(bucket, y[:, None] == np.arange(2), groups)
    assert held.tolist() == [True, True, False, False, True, False]
    assert not moved.any() and not untaught.any()


def test_a_tag_taught_only_by_held_out_labels_moves_whole_groups_into_training_never_one_twin():
    from ml import promotion

    bucket = np.array([True, True, True, True, False, True])
    y = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [1, 0], [0, 0]])  # tag 1 only on row 1
    groups = np.array([3, 3, 2, 8, 9, 8])  # row 0 is row 1's twin: it moves too, though tag 0 is taught
    held, moved, untaught = promotion.holdout_split(bucket, y > 0, groups)
    assert untaught.tolist() == [False, True]
    assert moved.tolist() == [True, True, False, False, False, False]
    assert held.tolist() == [False, False, True, True, False, True]
    # without groups only the row saying the untaught tag moves: its twin would judge a copy it trained on
    _, alone, _ = promotion.holdout_split(bucket, y > 0)
    assert alone.tolist() == [False, True, False, False, False, False]


def test_a_split_without_groups_is_a_split_of_single_row_groups():
    from ml import promotion

    rng = np.random.default_rng(0)
    bucket, y = rng.random(200) < 0.3, rng.integers(0, 6, 200)
    positives = y[:, None] == np.arange(7)  # tag 6 has no label at all
    plain = promotion.holdout_split(bucket, positives)
    single = promotion.holdout_split(bucket, positives, np.arange(200)[::-1])
    assert all((a == b).all() for a, b in zip(plain, single))
