"""Label savings: the order a team actually labelled in, against random orders of the same labels.

`ml.simulate` answers "would uncertainty sampling save labels?" offline, on a benchmark.
In the product the question is "did our queue save labels?", and the data to answer it is
already there: every label has a creation order, and a held-out set scores any head. Replay
the training labels in that order, train a head on the first n of them for a few n, score
it on the held-out labels; do the same for random orders of the *same* labels. The gap
between the curves is what the queue's choice of *which next* bought; the labels needed to
reach 95 % of the final score, queue vs random, is the saving in labels.

Heads use the fixed default L2 strength (no internal CV): the curve compares orders, so
every point must be trained the same way, and it keeps a retrain's extra cost to seconds.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ml.heads import LinearHead, default_l2, train_head

ScoreFn = Callable[[LinearHead, np.ndarray, np.ndarray], float]
MAX_REPLAY = 5000  # labels replayed at most; the interesting part of the curve is the start


def labels_to_reach(curve: list[dict], target: float) -> int | None:
    """First label count whose (mean) score reaches target; None = never within the curve."""
    return next((c["labels"] for c in curve if c["accuracy"] >= target), None)


def accuracy(head: LinearHead, X: np.ndarray, y: np.ndarray) -> float:
    return float((head.predict_proba(X).argmax(1) == y).mean())


def replay_points(n: int, n_classes: int, points: int = 8) -> list[int]:
    """Label counts to train at: roughly log-spaced from ~2 per class to n (always included)."""
    start = min(n, max(2 * n_classes, 10))
    grid = np.unique(np.round(np.geomspace(start, n, points)).astype(int)) if n > start else [n]
    return [int(v) for v in grid]


def replay_curve(X: np.ndarray, y: np.ndarray, order: np.ndarray, X_test: np.ndarray,
                 y_test: np.ndarray, n_classes: int, *, multilabel: bool = False,
                 score: ScoreFn = accuracy, points: int = 8, random_orders: int = 3,
                 seed: int = 0) -> dict:
    """Scores on (X_test, y_test) of heads trained on the first n labels of ``order`` (row
    indices into X, y: the order they were labelled in) and of ``random_orders`` shuffles.

    Returns {"labels": [n...], "queue": [score...], "random": [mean score...],
    "random_min"/"random_max": [...], "target": 0.95 * final queue score,
    "queue_to_95pct", "random_to_95pct", "labels_saved_pct"} -- the last three None when a
    curve never reaches the target. At most MAX_REPLAY labels are replayed (the first ones)."""
    order = np.asarray(order, dtype=np.int64)[:MAX_REPLAY]
    grid = replay_points(len(order), n_classes, points)
    rng = np.random.default_rng(seed)
    shuffles = [rng.permutation(order) for _ in range(random_orders)]

    def curve(seq: np.ndarray) -> list[float]:
        out = []
        for n in grid:
            idx = seq[:n]
            head = train_head(X[idx], y[idx], n_classes, multilabel=multilabel, seed=seed,
                              l2=default_l2(n))
            out.append(score(head, X_test, y_test))
        return out

    queue = curve(order)
    rand = np.array([curve(s) for s in shuffles]) if shuffles else np.zeros((0, len(grid)))
    target = 0.95 * queue[-1]
    as_curve = lambda ys: [{"labels": n, "accuracy": a} for n, a in zip(grid, ys)]  # noqa: E731
    q95 = labels_to_reach(as_curve(queue), target)
    r95 = labels_to_reach(as_curve(rand.mean(0)), target) if len(rand) else None
    return {
        "labels": grid, "queue": queue,
        "random": rand.mean(0).tolist() if len(rand) else [],
        "random_min": rand.min(0).tolist() if len(rand) else [],
        "random_max": rand.max(0).tolist() if len(rand) else [],
        "target": target, "queue_to_95pct": q95, "random_to_95pct": r95,
        "labels_saved_pct": round(100 * (1 - q95 / r95), 1) if q95 and r95 else None,
    }
