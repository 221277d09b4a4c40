"""ml.savings: replaying the labelling order against random orders of the same labels."""
from __future__ import annotations

import numpy as np

from ml.heads import train_head
from ml.savings import replay_curve, replay_points
from ml.selection import select_batch
from tests.ml._embeddings import shoes_embeddings


def _queue_order(X: np.ndarray, y: np.ndarray, n_active: int, seed: int = 0) -> np.ndarray:
    """The order the product's queue would have asked for (default "diverse" pages of 10,
    from one example per class), then the rest in random order."""
    rng = np.random.default_rng(seed)
    order = [int(rng.choice(np.flatnonzero(y == c))) for c in np.unique(y)]
    while len(order) < n_active:
        head = train_head(X[order], y[order], 3, seed=seed)
        pool = np.setdiff1d(np.arange(len(y)), order)
        picked = select_batch(head.predict_proba(X[pool]), X[pool], 10, "diverse", seed)
        order += [int(i) for i in pool[np.asarray(picked)]]
    rest = np.setdiff1d(np.arange(len(y)), order)
    return np.concatenate([order, rng.permutation(rest)])


def test_replay_points_run_from_a_few_per_class_to_every_label():
    assert replay_points(711, 3, 8)[0] == 10 and replay_points(711, 3, 8)[-1] == 711
    assert replay_points(5, 3) == [5]
    pts = replay_points(4000, 28, 8)
    assert pts[0] == 56 and pts == sorted(set(pts))


def test_the_queue_order_beats_random_orders_of_the_same_shoe_labels():
    s = shoes_embeddings()
    queue_n, random_n = [], []
    # One session is a noisy draw on a grid this coarse (10, 18, 34, 62, 114, 210, 387, 711
    # labels): three sessions with different seed labels, compared in total.
    for seed in range(3):
        order = _queue_order(s.X_train, s.y_train, 150, seed)
        r = replay_curve(s.X_train, s.y_train, order, s.X_test, s.y_test, 3)
        assert r["labels"][-1] == len(s.y_train) and len(r["queue"]) == len(r["random"]) == len(r["labels"])
        # all labels in any order is the same training set: the curves must meet at the end
        assert r["queue"][-1] == r["random"][-1]
        assert r["queue_to_95pct"] is not None and r["random_to_95pct"] is not None
        # never later than random orders of the same labels ...
        assert r["queue_to_95pct"] <= r["random_to_95pct"]
        queue_n.append(r["queue_to_95pct"])
        random_n.append(r["random_to_95pct"])
    # ... and over the sessions, the uncertainty/diversity order gets there with fewer labels
    assert sum(queue_n) < 0.8 * sum(random_n)


def test_a_one_class_at_a_time_order_is_worse_than_random():
    s = shoes_embeddings()
    order = np.argsort(s.y_train, kind="stable")  # every adidas first, then converse, then nike
    r = replay_curve(s.X_train, s.y_train, order, s.X_test, s.y_test, 3, random_orders=2)
    assert r["queue"][0] < r["random_min"][0]  # early heads know one brand only
    assert r["queue"][-1] == r["random"][-1]
