"""Fitting core of the linear heads (``ml.heads``): the L-BFGS solve, targets and class-balanced
weights, the internal CV that picks the L2 strength, and the out-of-fold probabilities the
multi-label decision thresholds are tuned on (``threshold_oof``).

All functions work on standardised features ``Xs`` (a float32 tensor) and only on the classes /
tags that can be learned (``learnable``); ``ml.heads.train_head`` does the bookkeeping around them.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ml.decision import tunable_tags
from ml.folds import stratified_folds
from ml.metrics import per_label_log_loss

ClassWeight = Literal["balanced"] | None

L2_GRID_FACTORS = (0.2, 1.0, 5.0)  # multiples of default_l2(n) tried by the internal CV
CV_FOLDS = 3
CV_MAX_ITER = 30  # CV only has to rank a few strengths; near-converged solutions are enough
MIN_CV_SAMPLES = 40  # below this a 3-fold CV estimate is noise; use the default strength
# Fold heads refit alone at the chosen strength for threshold tuning: after 50 L-BFGS iterations
# the mean tuned cuts (8 tags of bench/thresholds.py) are within 0.03 of 100's or 200's.
THRESHOLD_MAX_ITER = 50


def default_l2(n: int) -> float:
    """L2 strength for the mean loss when there is too little data to cross-validate.

    Equivalent to scikit-learn's ``C = 0.01`` (``l2 = 1 / (C n)``), which was best on the shoes
    embeddings; clipped so tiny training sets are not regularised into a constant.
    """
    return float(np.clip(100.0 / max(n, 1), 0.01, 2.0))


def fit(
    Xs: torch.Tensor,
    Y: torch.Tensor,
    M: torch.Tensor,
    l2s: Sequence[float],
    multilabel: bool,
    max_iter: int = 100,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Minimise weighted mean CE/BCE + l2/2 ||W||^2 with L-BFGS, once per strength in ``l2s``.

    ``Y`` is (n, k): one-hot rows (single-label) or {0,1} tags; ``M`` the sample weights,
    (n, 1) per row for single-label or (n, k) per element for multi-label. Returns one (W (d, k),
    b (k,)) per strength. The strengths are solved jointly as one block-separable problem:
    with few classes the cost is reading X, so G problems in one pass cost little more than one.
    (They share L-BFGS's steps, though: after ``max_iter`` each is less converged than alone.)
    """
    (n, d), k, G = Xs.shape, Y.shape[1], len(l2s)
    # (G*k, d) layout: X @ Wt.T and its gradient G^T X are the fast GEMM forms for skinny W
    Wt = torch.zeros(G * k, d, requires_grad=True)
    b = torch.zeros(G * k, requires_grad=True)
    pen = torch.tensor(l2s, dtype=torch.float32).repeat_interleave(k)[:, None]
    opt = torch.optim.LBFGS(
        [Wt, b], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-4,
        tolerance_change=1e-7, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = (Xs @ Wt.T + b).view(n, G, k)
        if multilabel:
            per_item = F.binary_cross_entropy_with_logits(z, Y[:, None, :].expand(n, G, k), reduction="none")
            per_item = per_item * M[:, None, :]
        else:
            per_item = -Y[:, None, :] * F.log_softmax(z, dim=2) * M[:, None, :]
        loss = per_item.sum() / n + 0.5 * (pen * Wt * Wt).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W, bb = Wt.detach().T, b.detach()
    return [(W[:, g * k : (g + 1) * k].contiguous(), bb[g * k : (g + 1) * k]) for g in range(G)]


def learnable(y: np.ndarray, n_classes: int, multilabel: bool, known: np.ndarray | None = None) -> np.ndarray:
    """Classes that can be learned from ``y``: seen at least once (and, for tags, with a known "no")."""
    if multilabel:
        return (y.sum(axis=0) > 0) & ((known_mask(y, known) & (y == 0)).sum(axis=0) > 0)
    return np.bincount(y, minlength=n_classes) > 0


def known_mask(y: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """(n, k) bool: every entry when no mask was given; a "yes" is always known."""
    return np.ones(y.shape, dtype=bool) if known is None else known | (y > 0)


def targets(
    y: np.ndarray, multilabel: bool, class_weight: ClassWeight, learned: np.ndarray,
    known: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y, M) for the learned columns only, 'balanced' weights as in scikit-learn; unknown entries weigh 0."""
    n = len(y)
    if multilabel:
        Y = y[:, learned].astype(np.float32)
        K = known_mask(y, known)[:, learned]
        if class_weight == "balanced":
            n_pos, n_neg = Y.sum(axis=0), (K & (Y == 0)).sum(axis=0)  # both > 0 for learned tags
            M = np.where(Y > 0, n / (2 * n_pos), n / (2 * np.maximum(n_neg, 1)))
        else:
            M = np.ones_like(Y)
        return torch.from_numpy(Y), torch.from_numpy((M * K).astype(np.float32))
    yl = (np.cumsum(learned) - 1)[y]  # original class -> column among learned classes
    k = int(learned.sum())
    Y = np.zeros((n, k), dtype=np.float32)
    Y[np.arange(n), yl] = 1.0
    cw = n / (k * np.bincount(yl, minlength=k)) if class_weight == "balanced" else np.ones(k)
    return torch.from_numpy(Y), torch.from_numpy(cw[yl].astype(np.float32)[:, None])


def proba(Xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor, multilabel: bool) -> np.ndarray:
    z = Xs @ W + b
    return (torch.sigmoid(z) if multilabel else torch.softmax(z, dim=1)).double().numpy()


def cross_validate(
    Xs: torch.Tensor, y: np.ndarray, multilabel: bool, class_weight: ClassWeight,
    learned: np.ndarray, l2_grid: list[float], seed: int, groups: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> tuple[float, np.ndarray | None]:  # fmt: skip
    """Pick the L2 strength by held-out log-loss; also return the out-of-fold probabilities
    (n, k_learned) for the chosen strength (NaN where a sample could not be scored)."""
    folds = stratified_folds(y[:, learned] if multilabel else y, CV_FOLDS, seed, groups)
    n, kl = len(y), int(learned.sum())
    oof = np.full((len(l2_grid), n, kl), np.nan)
    for f in range(CV_FOLDS):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        # classes missing from this training fold are treated like unseen classes: their
        # held-out samples cannot be scored (single-label) / the fold is skipped (multi-label)
        fold_known = None if known is None else known[tr]
        fold_learned = learned & learnable(y[tr], len(learned), multilabel, fold_known)
        if multilabel and not np.array_equal(fold_learned, learned):
            continue
        if fold_learned.sum() < 2 and not multilabel:
            continue
        Yt, Mt = targets(y[tr], multilabel, class_weight, fold_learned, fold_known)
        cols = np.flatnonzero(fold_learned[learned])
        Xtr, Xte = Xs[torch.from_numpy(tr)], Xs[torch.from_numpy(te)]
        for g, (W, b) in enumerate(fit(Xtr, Yt, Mt, l2_grid, multilabel, max_iter=CV_MAX_ITER)):
            oof[g][np.ix_(te, cols)] = proba(Xte, W, b, multilabel)
    Ytrue = y[:, learned] if multilabel else (np.cumsum(learned) - 1)[y]
    losses = []
    for g in range(len(l2_grid)):
        if multilabel:
            ok = ~np.isnan(oof[g]).any(axis=1)
        else:
            ok = ~np.isnan(oof[g][np.arange(n), Ytrue])
        P = np.nan_to_num(oof[g][ok], nan=0.0)
        K = None if known is None or not multilabel else known[:, learned][ok]
        losses.append(float(per_label_log_loss(P, Ytrue[ok], multilabel, eps=1e-7, known=K).mean())
                      if ok.sum() >= 10 else np.inf)
    if not np.isfinite(min(losses)):
        return default_l2(n), None
    best = int(np.argmin(losses))
    return float(l2_grid[best]), oof[best]


def threshold_oof(
    Xs: torch.Tensor, y: np.ndarray, class_weight: ClassWeight, learned: np.ndarray, l2: float,
    seed: int, groups: np.ndarray | None = None, known: np.ndarray | None = None,
) -> np.ndarray | None:  # fmt: skip
    """Out-of-fold probabilities (n, k_learned) to tune multi-label thresholds on, or None when
    no tag has the evidence to be tuned (``ml.decision.tunable_tags``; their columns are NaN).

    The CV's own out-of-fold probabilities are not used: its 30 iterations on three strengths
    solved jointly leave the fold heads far from converged, and their F1-best cut sat too low
    for the final head (8 tags, "shoe": 0.26-0.34 on average, 0.45-0.53 on the test photos).
    Here each fold head is refit alone at the chosen strength, on the CV's folds, for the
    tunable tags only (the problem is separable by tag)."""
    Y = y[:, learned]
    K = known_mask(y, known)[:, learned]
    tune = tunable_tags(Y, K)
    if not tune.any():
        return None
    cols = learned.copy()
    cols[learned] = tune
    folds = stratified_folds(Y, CV_FOLDS, seed, groups)  # the folds cross_validate used
    oof = np.full(Y.shape, np.nan)
    for f in range(CV_FOLDS):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        fold_known = None if known is None else known[tr]
        if not np.array_equal(cols & learnable(y[tr], len(cols), True, fold_known), cols):
            continue  # a tag without a "yes" or a known "no" in this fold: its rows stay NaN
        Yt, Mt = targets(y[tr], True, class_weight, cols, fold_known)
        [(W, b)] = fit(Xs[torch.from_numpy(tr)], Yt, Mt, [l2], True, max_iter=THRESHOLD_MAX_ITER)
        oof[np.ix_(te, np.flatnonzero(tune))] = proba(Xs[torch.from_numpy(te)], W, b, True)
    return oof
