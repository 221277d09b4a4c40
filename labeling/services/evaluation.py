"""A retrain's verdict: held-out metrics of the new model, the live model's score on the same
held-out labels when the two are comparable, and the savings replay (services.training)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from django.conf import settings

from ml import promotion
from ml.heads import LinearHead
from ml.localmatch import fuse
from ml.metrics import classification_metrics, macro_f1_ci
from ml.savings import replay_curve

from ..models import ModelVersion, Taxonomy
from . import localmatch, suggesting, vectors

if TYPE_CHECKING:
    from .training import Dataset


def score(taxonomy: Taxonomy, P: np.ndarray, y: np.ndarray, names: list[str], thresholds=None,
          known: np.ndarray | None = None) -> dict:
    """Held-out metrics; multi-label decisions use each model's own tuned thresholds, and
    answers ``known`` leaves out (a tag newer than the label) count for nothing."""
    if taxonomy.multilabel:
        from ml.metrics import multilabel_metrics

        m = multilabel_metrics(y, P, thresholds, names, known)
        m["score"] = m.get("micro_f1", 0.0)
        return m
    m = classification_metrics(y, P, names)
    m["score"] = m["accuracy"]
    return m


def _replay_score(taxonomy: Taxonomy, names: list[str]):
    """The savings replay scores heads like the promotion check does (accuracy, or micro-F1
    at each head's own thresholds for multi-label)."""
    def score_head(head, X: np.ndarray, y: np.ndarray) -> float:
        return float(score(taxonomy, head.predict_proba(X), y, names, head.thresholds)["score"])
    return score_head


def _live_on(taxonomy: Taxonomy, X: np.ndarray, tag_ids: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The live model's probabilities and thresholds re-ordered into ``tag_ids`` (tags may
    have been added since: the live model never predicts those). Single-label rows are
    renormalised over the tags kept: the share it gave a tag retired since would otherwise
    count against it in the log-loss, while the new model spreads all of its over ``tag_ids``."""
    head = suggesting.load_head(taxonomy.live_model)
    P_live = head.predict_proba(X)
    col = {t: i for i, t in enumerate(taxonomy.live_model.tag_ids)}
    P = np.zeros((len(X), len(tag_ids)), dtype=np.float32)
    thresholds = np.full(len(tag_ids), 0.5)
    for j, t in enumerate(tag_ids):
        if t in col:
            P[:, j] = P_live[:, col[t]]
            if head.thresholds is not None:
                thresholds[j] = head.thresholds[col[t]]
    if not taxonomy.multilabel:
        total = P.sum(axis=1, keepdims=True)
        np.divide(P, total, out=P, where=total > 0)
    return P, (thresholds if head.thresholds is not None else None)


def _comparable(live: ModelVersion | None) -> bool:
    """Compare with the live model only on its own terms: it was evaluated without the held-out
    assets, and its head reads the current backbone's features (after a TAGLOOP_BACKBONE change
    its input has another meaning, or another size)."""
    return live is not None and live.backbone == vectors.backbone_name() and \
        (live.metrics or {}).get("n_holdout", 0) > 0


def _promotion_reason(live: ModelVersion | None, enough_holdout: bool) -> str:
    """Why a model is promoted without a comparison with the live one."""
    if live is None:
        return "first model"
    if live.backbone != vectors.backbone_name():
        return f"the live model reads {live.backbone} features, not {vectors.backbone_name()}: not comparable"
    if not enough_holdout:
        return "holdout too small to compare"
    return "the live model was trained on every label (too few were held out then): not comparable"


def evaluate(
    taxonomy: Taxonomy, head: LinearHead, local: localmatch.Fitted | None, data: Dataset, X: np.ndarray,
    train_mask: np.ndarray, names: list[str], progress: Callable[[float, str], None],
) -> tuple[bool, dict]:  # fmt: skip
    """(promote?, metrics): held-out metrics, the comparison with the live model when it is
    fair, and the savings replay.

    With local evidence both models are fused with the matches of the held-out assets to the
    new index (the held-out assets are never templates), each at its own weight: the live
    model at the weight it was saved with, 0 when it had none. The head alone is reported as
    ``local.score_without``, so the evidence's share of the score is visible."""
    hold, y, live = data.holdout, data.y, taxonomy.live_model
    known = None if data.known is None else data.known[hold]  # multi-label: tags newer than a label
    # services.training trains on everything when the holdout is too small to compare
    enough_holdout = bool(hold.any() and not train_mask[hold].any())
    metrics: dict = {"n_train": int(train_mask.sum()), "n_holdout": int(hold.sum()) if enough_holdout else 0}
    if local is not None:
        metrics["local"] = dict(local.info)
    promote, reason = True, _promotion_reason(live, enough_holdout)
    if enough_holdout:
        progress(0.6, f"evaluating on {int(hold.sum())} held-out labels")
        P_new = head.predict_proba(X[hold])
        evidence = local.scores(data.asset_ids[hold]) if local is not None else None
        if evidence is not None:
            local.remember(data.asset_ids[hold], evidence)
            metrics["local"]["score_without"] = score(taxonomy, P_new, y[hold], names, known=known)["score"]
            P_new = fuse(P_new, evidence, local.weight)
        new = score(taxonomy, P_new, y[hold], names, head.thresholds, known)
        metrics.update(new)
        if "confusion" in new:  # single-label: the dashboard's interval, resampled once here
            metrics["macro_f1_ci95"] = list(macro_f1_ci(new["confusion"]) or (0.0, 0.0))
        if _comparable(live):
            P_live, live_thresholds = _live_on(taxonomy, X[hold], data.tag_ids)
            if evidence is not None:
                P_live = fuse(P_live, evidence, localmatch.weight_of(live))
            old = score(taxonomy, P_live, y[hold], names, live_thresholds, known)
            metrics["live_score_same_holdout"] = old["score"]
            # not "new score >= live score": on a few dozen labels that refuses better models
            # by chance (ml.promotion); refused only when shown worse
            verdict = promotion.compare(P_new, P_live, y[hold], multilabel=taxonomy.multilabel,
                                        alpha=settings.TAGLOOP_PROMOTION_ALPHA, known=known)
            metrics["promotion"] = verdict.as_dict()
            promote = verdict.promote
            reason = f"holdout score {new['score']:.4f} vs live {old['score']:.4f}; {verdict.describe()}"
        progress(0.65, "replaying the labelling order against random orders")
        tr = np.flatnonzero(train_mask)
        metrics["savings"] = replay_curve(
            X[tr], y[tr], np.argsort(data.label_ids[tr], kind="stable"), X[hold], y[hold], len(data.tag_ids),
            multilabel=taxonomy.multilabel, score=_replay_score(taxonomy, names))
    if head.thresholds is not None:
        metrics["thresholds"] = [float(t) for t in head.thresholds]
    metrics["decision"] = reason
    return promote, metrics
