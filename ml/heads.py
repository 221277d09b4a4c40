"""Linear classification heads on frozen embeddings (single-label softmax or multi-label sigmoids).

Why linear: on EfficientNet-Lite0 features a well-regularised logistic regression is the strong,
fast, hard-to-overfit baseline. A one-hidden-layer MLP (1280-256-k, dropout, AdamW) was measured
on the shoes embeddings and did not beat it (5-fold CV accuracy 0.842 vs 0.840, test 0.798 vs
0.816) while training ~50x slower, so there is no MLP option. Training is full-batch L-BFGS in
torch on standardised features, deterministic for a given seed; 2,000 x 1280 including the
internal CV takes ~0.5-0.6 s of CPU on one core.

Conventions
- Features are standardised with the training mean/std stored in the head; the L2 penalty is
  applied to the weights in that standardised space (the bias is not penalised).
- The loss is the (class-weighted) *mean* cross-entropy + ``l2 / 2 * ||W||^2``. The strength is
  picked by a small stratified CV when the data allows it, otherwise ``default_l2(n)``.
- Classes (or tags) without a single training example cannot be learned: they get a fixed
  probability of 0 (a multi-label tag present on every example gets 1) instead of whatever an
  unconstrained bias would drift to.
- Multi-label ``known`` (n, k): entries that are False (a label made before its tag existed)
  carry no weight in the loss, the balanced weights, the CV's L2 choice or the thresholds.
- Multi-label decision thresholds stay at 0.5, the equal-prior cut of a balanced sigmoid, unless
  out-of-fold evidence says another cut is better (``ml.decision.tune_tag_thresholds``).

The fitting core (the L-BFGS solve, the weights, the internal CV) is ``ml.head_fit``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch

from ml.atomic import atomic_write
from ml.decision import tune_tag_thresholds
from ml.folds import stratified_folds
from ml.head_fit import (
    L2_GRID_FACTORS, MIN_CV_SAMPLES, ClassWeight, cross_validate, default_l2, fit, known_mask, learnable, targets,
    threshold_oof,
)

__all__ = [
    "FORMAT_VERSION",
    "LinearHead",
    "train_head",
    "default_l2",
    "stratified_folds",
    "out_of_fold_proba",
]

FORMAT_VERSION = 1
SCALE_PRIOR_SAMPLES = 20  # weight of the pooled variance in each feature's scale


def shrunk_scale(X: np.ndarray) -> np.ndarray:
    """Per-feature scale for standardisation, shrunk toward the pooled variance.

    With a handful of labels a per-feature std is noise: post-ReLU features that happen to be
    zero in every training sample get a near-zero std, and any later image where they fire is
    blown up by orders of magnitude (six seed labels gave worse-than-chance predictions). The
    pooled variance acts as a prior worth SCALE_PRIOR_SAMPLES samples; with many labels the
    feature's own std dominates.
    """
    n = X.shape[0]
    var = X.var(axis=0)
    pooled = float(var.mean()) or 1.0
    scale = np.sqrt((n * var + SCALE_PRIOR_SAMPLES * pooled) / (n + SCALE_PRIOR_SAMPLES))
    return np.where(scale > 1e-6, scale, 1.0).astype(np.float32)


@dataclass
class LinearHead:
    mean: np.ndarray  # (d,) feature mean used for standardisation
    scale: np.ndarray  # (d,) feature std (1 where a feature is constant)
    weight: np.ndarray  # (d, k) in standardised space; zero columns for fixed classes
    bias: np.ndarray  # (k,)
    multilabel: bool
    thresholds: np.ndarray | None  # (k,) per-tag decision thresholds, multi-label only
    fixed_proba: np.ndarray  # (k,) NaN = learned; otherwise the constant probability of the class
    l2: float  # regularisation strength actually used (for reports)

    @property
    def n_classes(self) -> int:
        return int(self.bias.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def learned(self) -> np.ndarray:
        return np.isnan(self.fixed_proba)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Raw logits (n, k); meaningless for fixed classes (their columns are 0)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"expected X of shape (n, {self.dim}), got {X.shape}")
        return ((X - self.mean) / self.scale) @ self.weight + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.decision_function(X).astype(np.float64)
        learned = self.learned
        P = np.empty_like(z)
        if self.multilabel:
            P[:, learned] = 1.0 / (1.0 + np.exp(-np.clip(z[:, learned], -500, 500)))
        elif learned.any():
            zl = z[:, learned]
            e = np.exp(zl - zl.max(axis=1, keepdims=True))
            P[:, learned] = e / e.sum(axis=1, keepdims=True)
        P[:, ~learned] = self.fixed_proba[~learned]
        return P

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices (n,) for single-label; a {0,1} matrix (n, k) for multi-label."""
        P = self.predict_proba(X)
        if self.multilabel:
            t = 0.5 if self.thresholds is None else self.thresholds
            return (P >= t).astype(np.int64)
        return P.argmax(axis=1)

    def save(self, path: str | Path | BinaryIO) -> None:
        """Write an .npz (no pickled objects) at exactly ``path``."""
        arrays = dict(
            format_version=np.int64(FORMAT_VERSION),
            kind=np.array("linear"),
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            weight=self.weight.astype(np.float32),
            bias=self.bias.astype(np.float32),
            multilabel=np.bool_(self.multilabel),
            has_thresholds=np.bool_(self.thresholds is not None),
            thresholds=np.zeros(0) if self.thresholds is None else self.thresholds.astype(np.float64),
            fixed_proba=self.fixed_proba.astype(np.float64),
            l2=np.float64(self.l2),
        )
        if isinstance(path, (str, Path)):
            # np.savez(path) would append ".npz" to other suffixes; a file object keeps the name.
            # Atomic: a crash mid-write must not leave a truncated head where a model is expected.
            with atomic_write(path) as f:
                np.savez(f, **arrays)
        else:
            np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path | BinaryIO) -> LinearHead:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version > FORMAT_VERSION or str(z["kind"]) != "linear":
                raise ValueError(f"unsupported head file (kind={z['kind']}, version={version})")
            return cls(
                mean=z["mean"],
                scale=z["scale"],
                weight=z["weight"],
                bias=z["bias"],
                multilabel=bool(z["multilabel"]),
                thresholds=z["thresholds"].copy() if bool(z["has_thresholds"]) else None,
                fixed_proba=z["fixed_proba"],
                l2=float(z["l2"]),
            )



@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (a process-wide setting, restored after)."""
    prev = torch.get_num_threads()
    if prev != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if prev != n:
            torch.set_num_threads(prev)


def train_head(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    multilabel: bool = False,
    class_weight: ClassWeight = "balanced",
    seed: int = 0,
    l2: float | None = None,
    groups: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> LinearHead:
    """Train a linear head. ``l2=None`` chooses the strength by internal CV (or the default).

    Single-label ``y``: ints (n,) in [0, n_classes); multi-label ``y``: (n, n_classes) of {0, 1}.
    ``known`` (multi-label, (n, n_classes) bool): False where a row says nothing about a tag (a
    label older than the tag): no loss, no threshold tuning there. A 1 in ``y`` is always known.
    ``groups`` (n,): rows from one source image (augmented views, box crops) are kept in one
    internal CV fold, so the L2 choice is not rewarded for memorising near-duplicates.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    n = X.shape[0]
    if n == 0 or X.ndim != 2:
        raise ValueError(f"need a non-empty (n, d) feature matrix, got shape {X.shape}")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups: {len(groups)} entries for {n} rows")
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    if known is not None and (not multilabel or np.shape(known) != (n, n_classes)):
        raise ValueError(f"known must be a multi-label (n, n_classes) mask, got {np.shape(known)}")
    if multilabel:
        if y.shape != (n, n_classes):
            raise ValueError(f"multi-label y must have shape {(n, n_classes)}, got {y.shape}")
        y = (y > 0).astype(np.int64)
        known = None if known is None else known_mask(y, np.asarray(known, dtype=bool))
        learned = learnable(y, n_classes, multilabel, known)
        fixed = np.where(learned, np.nan, (y.sum(axis=0) > 0).astype(np.float64))
    else:
        y = y.astype(np.int64).reshape(-1)
        if len(y) != n or y.min() < 0 or y.max() >= n_classes:
            raise ValueError("single-label y must be (n,) ints in [0, n_classes)")
        learned = learnable(y, n_classes, multilabel)
        if learned.sum() == 1:  # a single known class: nothing to discriminate
            learned[:] = False
            fixed = (np.arange(n_classes) == y[0]).astype(np.float64)
        else:
            fixed = np.where(learned, np.nan, 0.0)

    # One thread: these skinny GEMMs are latency-bound, and on the 2-core target a second
    # OpenMP thread made training 3-5x slower in CPU *and* wall time (2,000 x 1280: 0.6 s vs
    # 4.6 s with other processes running); it also leaves the other core to the web app.
    with torch_threads(1):
        return _train(X, y, n_classes, multilabel, class_weight, seed, l2, learned, fixed, groups, known)


def _train(
    X: np.ndarray, y: np.ndarray, n_classes: int, multilabel: bool, class_weight: ClassWeight,
    seed: int, l2: float | None, learned: np.ndarray, fixed: np.ndarray,
    groups: np.ndarray | None = None, known: np.ndarray | None = None,
) -> LinearHead:  # fmt: skip
    n = len(X)
    torch.manual_seed(seed)
    mean = X.mean(axis=0)
    scale = shrunk_scale(X)
    Xs = torch.from_numpy((X - mean) / scale)

    weight = np.zeros((X.shape[1], n_classes), dtype=np.float32)
    bias = np.zeros(n_classes, dtype=np.float32)
    thresholds = np.full(n_classes, 0.5) if multilabel else None
    chosen_l2 = default_l2(n) if l2 is None else float(l2)
    if learned.any():
        validated = l2 is None and n >= MIN_CV_SAMPLES
        if validated:
            grid = [default_l2(n) * f for f in L2_GRID_FACTORS]
            chosen_l2, _ = cross_validate(Xs, y, multilabel, class_weight, learned, grid, seed, groups, known)
        [(W, b)] = fit(Xs, *targets(y, multilabel, class_weight, learned, known), [chosen_l2], multilabel)
        weight[:, learned], bias[learned] = W.numpy(), b.numpy()
        if multilabel and validated:  # thresholds are tuned where the L2 strength is
            oof = threshold_oof(Xs, y, class_weight, learned, chosen_l2, seed, groups, known)
            thresholds[learned] = tune_tag_thresholds(oof, y[:, learned], None if known is None else known[:, learned])
    return LinearHead(mean, scale, weight, bias, multilabel, thresholds, fixed, chosen_l2)


# ----------------------------------------------------------------------------- helpers


def out_of_fold_proba(
    X: np.ndarray, y: np.ndarray, n_classes: int, *, n_folds: int = 5, seed: int = 0, **train_kwargs
) -> np.ndarray:
    """Probabilities (n, n_classes) for each sample from a head that never saw it (k-fold)."""
    y = np.asarray(y)
    folds = stratified_folds(y, n_folds, seed)
    P = np.zeros((len(y), n_classes))
    for f in range(n_folds):
        te = folds == f
        if not te.any():
            continue
        head = train_head(X[~te], y[~te], n_classes, seed=seed, **train_kwargs)
        P[te] = head.predict_proba(X[te])
    return P
