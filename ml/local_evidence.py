"""``ml.evaluate --local yes``: local-feature evidence (ml.localmatch) fused into a head's
class probabilities, fold by fold, with nothing chosen on the test fold.

Per outer fold: the training part's images are the labelled set (one index); the test fold's
images are scored against it; the training images themselves are scored leave-one-out (each
against all the others), and the fusion weight is the one that scores best on those with the
head's inner out-of-fold probabilities -- the same data a decision rule is tuned on.

Classes: on fl27 the templates carry the fine label (27 brands; "none" has no pattern to match,
so it is no template) and a task class gets the best score of its fine classes (4-way "other"
= the best of 24 other brands; logo = the best brand). Elsewhere the task's own labels.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ml.datasets import FL27_NONE, Task
from ml.decision import SCORE_FNS
from ml.heads import out_of_fold_proba
from ml.localmatch import Keypoints, MatchIndex, fuse, pick_weight


def template_labels(task: Task) -> tuple[np.ndarray, int]:
    """(label per sample, -1 = no template; number of template classes)."""
    if task.fine_y is None:
        return task.y.copy(), task.n_classes
    lab = task.fine_y.copy()
    if FL27_NONE in task.fine_labels:
        lab[lab == task.fine_labels.index(FL27_NONE)] = -1
    return lab, len(task.fine_labels)


def to_task_classes(task: Task, scores: np.ndarray) -> np.ndarray:
    """Template-class scores (n, m) -> the task's classes (n, k): the best of each class's."""
    if task.fine_y is None:
        return scores
    out = np.zeros((len(scores), task.n_classes))
    for f, c in enumerate(task.fine_to_task):
        out[:, c] = np.maximum(out[:, c], scores[:, f])
    return out


def fold_scores(task: Task, kps: list[Keypoints], train_idx: np.ndarray,
                test_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Task-class inlier scores of the test fold and (leave-one-out) of the training part."""
    lab, m = template_labels(task)
    labels = np.full(len(task.y), -1)
    labels[train_idx] = lab[train_idx]  # test-fold labels never enter the index
    index = MatchIndex(kps, labels, m)
    s_test = scores_of(index, (kps[i] for i in test_idx), [None] * len(test_idx))
    s_train = scores_of(index, (kps[i] for i in train_idx), train_idx.tolist())
    return to_task_classes(task, s_test), to_task_classes(task, s_train)


def fuse_fold(task: Task, kps: list[Keypoints], train_idx: np.ndarray, test_idx: np.ndarray,
              p_test: np.ndarray, oof_train: np.ndarray, score_fn) -> tuple[np.ndarray, np.ndarray, dict]:
    """(fused test probabilities, fused training out-of-fold probabilities, info)."""
    s_test, s_train = fold_scores(task, kps, train_idx, test_idx)
    w, grid = pick_weight(oof_train, s_train, task.y[train_idx], score_fn)
    info = {"weight": w, "inner_scores": [round(g, 4) for g in grid],
            "test_with_inliers": int((s_test.max(1) >= 8).sum())}
    return fuse(p_test, s_test, w), fuse(oof_train, s_train, w), info


# -- the product's use (labeling/services/localmatch.py): one labelled set, no outer folds ----------
TEMPLATES_PER_TAG = 100  # newest labels of each tag in the index
MAX_TEMPLATES = 2000  # ~1,000 keypoints each: ~1 GB of float32 descriptors at most


def choose_templates(y: np.ndarray, newness: np.ndarray, per_class: int = TEMPLATES_PER_TAG,
                     total: int = MAX_TEMPLATES) -> np.ndarray:
    """Indices of the labelled items whose keypoints go into the index: the newest ``per_class``
    of each class (``newness``: larger = newer), fewer per class when the classes together
    would pass ``total``. Bounds index memory and build time for large label sets; the newest
    labels are the operators' current reading of each tag. Sorted."""
    y = np.asarray(y)
    classes = np.unique(y)
    if not len(classes):
        return np.zeros(0, dtype=np.int64)
    cap = max(1, min(per_class, total // len(classes)))
    keep = [idx[np.argsort(-np.asarray(newness)[idx], kind="stable")[:cap]]
            for idx in (np.flatnonzero(y == c) for c in classes)]
    return np.sort(np.concatenate(keep))


def scores_of(index: MatchIndex, queries: Iterable[Keypoints], exclude: Iterable[int | None]) -> np.ndarray:
    """(n, n_classes) inlier scores of a stream of query images (a loader can hand them over
    one at a time: keypoints of a large library never sit in memory together)."""
    rows = [index.scores(q, exclude=e) for q, e in zip(queries, exclude)]
    return np.array(rows).reshape(len(rows), index.n_classes)


def weight_for(X: np.ndarray, y: np.ndarray, n_classes: int, scores: np.ndarray) -> tuple[float, list[float]]:
    """The app's fusion weight for training labels (features ``X``, classes ``y``) with their
    leave-one-out inlier ``scores``: the weight whose fusion with the head's 5-fold out-of-fold
    probabilities is most accurate. Returns (weight, accuracy per weight)."""
    oof = out_of_fold_proba(X, y, n_classes, seed=0)
    return pick_weight(oof, scores, y, lambda yt, pred: SCORE_FNS["accuracy"](yt, pred, n_classes))


def fit_weight(index: MatchIndex, train_kps: Iterable[Keypoints], template_pos: Sequence[int | None],
               y: np.ndarray, X: np.ndarray) -> tuple[float, dict, np.ndarray]:
    """``weight_for`` the training items scored against ``index`` leave-one-out
    (``template_pos``: each item's image in the index, None when it is not a template).
    Returns (weight, info, the items' scores)."""
    s = scores_of(index, train_kps, template_pos)
    w, grid = weight_for(X, y, index.n_classes, s)
    info = {"weight": w, "inner_scores": [round(g, 4) for g in grid], "with_inliers": int((s.max(1) >= 8).sum())}
    return w, info, s
