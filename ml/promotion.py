"""Is a retrained model worse than the live one? Both scored on the same held-out labels.

A labelling loop evaluates on small held-out sets (one label in five: 10 to 50 labels for the
first retrains). On 13 labels two models' accuracies differ by one or two labels by chance
alone, and "promote only if the held-out accuracy is at least the live model's" then keeps
stale models: `bench/gate.py` (docs/ml-results.md, rounds 13-14) measured that with the product's
queue order the live model was 2+ points worse, on a separate test set, than the model the
rule refused at 17.5 % (shoes) and 13.8 % (FlickrLogos, 28 tags) of retrains, 0.9 and 0.8 points
on average (round 14's re-run; round 13 had measured 22-29 % with a bench that compared against
live models trained on their own held-out labels).

So the question asked here is whether the new model is *shown* worse: a one-sided paired
t-test on the per-label log-loss (the new model's minus the live one's). Log-loss, not
right/wrong: it uses how much probability each model gives the true tag, so it tells a
damaged model from noise with fewer labels. Measured on the same runs (shoes, FlickrLogos
28 tags), at the default ``alpha=0.05``: a model trained with 30 % of its labels flipped (11 to
13 points worse) is refused at 78 and 94 % of retrains with 40+ held-out labels (a sign test on
right/wrong at 0.05: 54 and 49 %), while ordinary retrains cost 0.07 and 0.00 points on average
instead of 0.9 and 0.8.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import ttest_1samp

from ml.metrics import per_label_log_loss

ALPHA = 0.05
HOLDOUT_BUCKETS = 5  # one labeled asset in five is held out for evaluation
MIN_HOLDOUT = 10  # below this a comparison says nothing: train on everything and promote
EPS = 1e-6  # probability floor: a tag the live model never predicts costs -log(1e-6) = 13.8
# Log-loss differences below this are rounding: a retrain on the same labels differs from the
# live model in the 7th digit, and a t-test on such noise would answer at random.
SAME = 1e-6


def is_holdout(sha256: str) -> bool:
    """Fixed per asset (by content hash), so every model is compared on the same kind of split
    and a held-out asset never leaks into a later model's training set."""
    return int(sha256[:8], 16) % HOLDOUT_BUCKETS == 0


def holdout_split(bucket: np.ndarray, positives: np.ndarray,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held out, moved, untaught): the rows of ``bucket`` (n,) bool (``is_holdout``, and
    whatever else the caller keeps out) are held out, except those saying yes to a tag that
    no other row does (``positives`` (n, k) bool, one-hot for single-label): that tag would
    never be learned, and its held-out labels would only count errors no model can avoid.
    ``moved`` marks them (they train), ``untaught`` (k,) their tags. Moving rows only adds
    training positives, so one pass settles it; deterministic.

    ``groups`` (n,) ints, one id per group of rows that must stay on one side (near-duplicate
    images: a twin trained on would make its held-out copy a memory test): a group is in the
    bucket only if all its rows are, and moves as a whole."""
    if groups is not None:
        bucket = _whole_groups(bucket, groups, every=True)
    untaught = positives[bucket].any(axis=0) & ~positives[~bucket].any(axis=0)
    moved = bucket & positives[:, untaught].any(axis=1)
    if groups is not None:
        moved = _whole_groups(moved, groups, every=False)  # a twin of a moved row moves with it
    return bucket & ~moved, moved, untaught


def _whole_groups(rows: np.ndarray, groups: np.ndarray, every: bool) -> np.ndarray:
    """(n,) bool: each row's group has ``rows`` on every member (``every``) or on any."""
    _, inverse = np.unique(groups, return_inverse=True)
    hits = np.bincount(inverse, weights=rows)
    sizes = np.bincount(inverse)
    return (hits == sizes if every else hits > 0)[inverse]


def can_compare(n_holdout: int) -> bool:
    """Whether ``n_holdout`` held-out labels are enough to compare two models. Below that a
    retrain trains on every label and is promoted unchecked. ``compare``'s paired test needs at
    least two rows whatever MIN_HOLDOUT is set to."""
    return n_holdout >= max(MIN_HOLDOUT, 2)


@dataclass(frozen=True)
class Comparison:
    n: int  # held-out labels compared
    new_log_loss: float
    live_log_loss: float
    p_worse: float  # one-sided p-value of "the new model's log-loss is higher"
    alpha: float
    promote: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        verdict = "not shown worse" if self.promote else "worse"
        return (f"log-loss on {self.n} held-out labels {self.new_log_loss:.3f} vs live "
                f"{self.live_log_loss:.3f}: {verdict} (one-sided paired t-test p = {self.p_worse:.3f}, "
                f"refused below {self.alpha:g})")


def compare(P_new: np.ndarray, P_live: np.ndarray, y: np.ndarray, *, multilabel: bool = False,
            alpha: float = ALPHA, known: np.ndarray | None = None) -> Comparison:
    """Promote unless the new model's held-out log-loss is higher than the live model's with
    one-sided p < ``alpha``. A larger alpha refuses more often (0.5: about whenever the mean
    log-loss is higher at all). ``known`` (multi-label (n, k) bool): only those answers count."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if not len(P_new) == len(P_live) == len(y):
        raise ValueError(f"{len(P_new)} rows of new probabilities, {len(P_live)} of live ones, {len(y)} labels")
    if len(y) < 2:
        raise ValueError(f"need at least 2 held-out rows to compare, got {len(y)}")
    new = per_label_log_loss(P_new, y, multilabel, eps=EPS, known=known)
    live = per_label_log_loss(P_live, y, multilabel, eps=EPS, known=known)
    d = new - live
    if np.ptp(d) > SAME:
        p = float(ttest_1samp(d, 0.0, alternative="greater").pvalue)
    else:  # the same difference on every row (the same model: 0): no variance to test
        p = 0.0 if d.mean() > SAME else 1.0
    return Comparison(n=len(d), new_log_loss=float(new.mean()), live_log_loss=float(live.mean()),
                      p_worse=p, alpha=float(alpha), promote=not p < alpha)
