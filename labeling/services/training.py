"""Retraining: request a run, claim it, train a head, evaluate, promote only if not worse.

A retrain can never be lost: the label counter is bumped in the label's own transaction,
the check is enqueued on commit and again by the periodic sweep, and a worker claims a run
with a conditional UPDATE (queued -> running), so a run enqueued twice executes once.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from ml.heads import train_head
from ml.metrics import classification_metrics
from ml.savings import replay_curve

from ..models import Asset, ImportJob, JobState, Label, ModelVersion, Taxonomy, TrainingRun
from . import suggesting, vectors

log = logging.getLogger(__name__)

HOLDOUT_BUCKETS = 5  # one labeled asset in five is held out for evaluation
MIN_HOLDOUT = 10  # below this a comparison says nothing: train on everything and promote
FAILED_BACKOFF = timedelta(minutes=10)  # the sweep does not hammer a run that keeps failing


def is_holdout(sha256: str) -> bool:
    """Fixed per asset (by content hash), so every model is compared on the same kind of split
    and a held-out asset never leaks into a later model's training set."""
    return int(sha256[:8], 16) % HOLDOUT_BUCKETS == 0


# -- requesting -------------------------------------------------------------------------
def request_run(taxonomy: Taxonomy, trigger: str = "threshold", force: bool = False) -> TrainingRun | None:
    """Create a queued run when enough new labels arrived (or ``force``); None when not due or
    when one is already queued/running (the database's partial unique index decides)."""
    taxonomy.refresh_from_db(fields=["labels_since_train", "retrain_threshold"])
    if not force:
        if taxonomy.labels_since_train < max(1, taxonomy.retrain_threshold):
            return None
        last = TrainingRun.objects.filter(taxonomy=taxonomy).order_by("-id").first()
        if last and last.state == TrainingRun.State.FAILED and last.finished and \
                timezone.now() - last.finished < FAILED_BACKOFF:
            return None
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(taxonomy=taxonomy, trigger=trigger)
    except IntegrityError:
        return None
    transaction.on_commit(lambda: enqueue(run.pk))
    return run


def enqueue(run_id: int) -> bool:
    from .. import tasks

    try:
        tasks.train.apply_async((run_id,), retry=False)
        return True
    except Exception as exc:  # broker down: the sweep re-enqueues queued runs
        log.warning("broker unreachable, run %s left queued for the sweep: %s", run_id, exc)
        return False


def train_now(taxonomy: Taxonomy, trigger: str = "manual") -> TrainingRun:
    """Create and execute a run in this process (demo, management commands, tests)."""
    with transaction.atomic():
        run = TrainingRun.objects.create(taxonomy=taxonomy, trigger=trigger)
    return execute_run(run.pk)


def fail_stale_runs() -> int:
    """A run (or import) whose worker died stops blocking after TAGLOOP_RUN_STALE_SECONDS
    without a heartbeat; its error says so, and a new run can be requested."""
    cutoff = timezone.now() - timedelta(seconds=settings.TAGLOOP_RUN_STALE_SECONDS)
    lost = {"error": "worker lost (no heartbeat)", "finished": timezone.now()}
    runs = TrainingRun.objects.filter(state=TrainingRun.State.RUNNING, heartbeat__lt=cutoff).update(
        state=TrainingRun.State.FAILED, **lost
    )
    imports = ImportJob.objects.filter(state=JobState.RUNNING, heartbeat__lt=cutoff).update(
        state=JobState.FAILED, **lost
    )
    return runs + imports


# -- executing --------------------------------------------------------------------------
def _progress(run: TrainingRun, fraction: float, message: str) -> None:
    run.progress, run.message = fraction, message
    TrainingRun.objects.filter(pk=run.pk).update(progress=fraction, message=message, heartbeat=timezone.now())


def execute_run(run_id: int) -> TrainingRun:
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, state=TrainingRun.State.QUEUED).update(
        state=TrainingRun.State.RUNNING, started=now, heartbeat=now
    )
    run = TrainingRun.objects.select_related("taxonomy", "taxonomy__client").get(pk=run_id)
    if not claimed:
        return run  # another worker has it, or it already ran
    try:
        _execute(run)
    except Exception as exc:
        log.exception("training run %s failed", run_id)
        TrainingRun.objects.filter(pk=run_id).update(
            state=TrainingRun.State.FAILED,
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"[:5000],
            finished=timezone.now(),
        )
    run.refresh_from_db()
    return run


@dataclass
class Dataset:
    asset_ids: np.ndarray
    label_ids: np.ndarray  # creation order of the current labels (for the savings replay)
    holdout: np.ndarray  # bool mask
    y: np.ndarray  # (n,) class index, or (n, k) 0/1 for multi-label
    tag_ids: list[int]


def collect(taxonomy: Taxonomy, watermark: int) -> Dataset:
    """Current labels up to ``watermark`` as a class-index target over the active tags."""
    tag_ids = list(taxonomy.active_tags().values_list("id", flat=True))
    index = {t: i for i, t in enumerate(tag_ids)}
    labels = (
        Label.objects.filter(taxonomy=taxonomy, is_current=True, id__lte=watermark)
        .select_related("asset")
        .prefetch_related("tags")
        .order_by("asset_id")
    )
    ids, label_ids, holdout, ys = [], [], [], []
    for label in labels:
        cols = [index[t.pk] for t in label.tags.all() if t.pk in index]
        if not cols:
            continue  # all its tags were retired since
        if taxonomy.multilabel:
            row = np.zeros(len(tag_ids), dtype=np.float32)
            row[cols] = 1
            ys.append(row)
        else:
            ys.append(cols[0])
        ids.append(label.asset_id)
        label_ids.append(label.pk)
        holdout.append(is_holdout(label.asset.sha256))
    y = np.array(ys, dtype=np.float32 if taxonomy.multilabel else np.int64)
    if taxonomy.multilabel:
        y = y.reshape(-1, len(tag_ids))
    return Dataset(np.array(ids, dtype=np.int64), np.array(label_ids, dtype=np.int64),
                   np.array(holdout, dtype=bool), y, tag_ids)


def _score(taxonomy: Taxonomy, P: np.ndarray, y: np.ndarray, names: list[str], thresholds=None) -> dict:
    """Held-out metrics; multi-label decisions use each model's own tuned thresholds."""
    if taxonomy.multilabel:
        from ml.metrics import multilabel_metrics

        m = multilabel_metrics(y, P, thresholds, names)
        m["score"] = m.get("micro_f1", 0.0)
        return m
    m = classification_metrics(y, P, names)
    m["score"] = m["accuracy"]
    return m


def _replay_score(taxonomy: Taxonomy, names: list[str]):
    """The savings replay scores heads like the promotion check does (accuracy, or micro-F1
    at each head's own thresholds for multi-label)."""
    def score(head, X: np.ndarray, y: np.ndarray) -> float:
        return float(_score(taxonomy, head.predict_proba(X), y, names, head.thresholds)["score"])
    return score


def _live_on(taxonomy: Taxonomy, X: np.ndarray, tag_ids: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The live model's probabilities and thresholds re-ordered into ``tag_ids`` (tags may
    have been added since: the live model never predicts those)."""
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
    return P, (thresholds if head.thresholds is not None else None)


def _execute(run: TrainingRun) -> None:
    taxonomy = Taxonomy.objects.select_related("live_model").get(pk=run.taxonomy_id)
    consumed = taxonomy.labels_since_train
    watermark = Label.objects.filter(taxonomy=taxonomy).aggregate(m=Max("id"))["m"] or 0
    TrainingRun.objects.filter(pk=run.pk).update(labels_consumed=consumed)
    _progress(run, 0.05, "collecting labels")
    data = collect(taxonomy, watermark)
    if len(data.asset_ids) == 0:
        raise ValueError("no labels to learn from")
    missing = list(
        Asset.objects.filter(pk__in=data.asset_ids.tolist())
        .exclude(embedded_with=vectors.backbone_name())
        .values_list("id", flat=True)
    )
    if missing:
        _progress(run, 0.1, f"embedding {len(missing)} assets")
        vectors.embed_assets(missing)
    found, X = vectors.vectors_for(taxonomy.client_id, data.asset_ids)
    keep = np.isin(data.asset_ids, found)
    ids, y, hold, label_ids = data.asset_ids[keep], data.y[keep], data.holdout[keep], data.label_ids[keep]
    order = {int(a): r for r, a in enumerate(found)}
    X = X[[order[int(a)] for a in ids]]
    k = len(data.tag_ids)
    tags = taxonomy.tags.in_bulk(data.tag_ids)
    names = [tags[t].path for t in data.tag_ids]

    enough_holdout = hold.sum() >= MIN_HOLDOUT
    train_mask = ~hold if enough_holdout else np.ones(len(ids), dtype=bool)
    _progress(run, 0.3, f"training on {int(train_mask.sum())} labels")
    head = train_head(X[train_mask], y[train_mask], k, multilabel=taxonomy.multilabel, seed=0)

    metrics: dict = {"n_train": int(train_mask.sum()), "n_holdout": int(hold.sum()) if enough_holdout else 0}
    promote, reason = True, "first model" if taxonomy.live_model is None else "holdout too small to compare"
    if enough_holdout:
        _progress(run, 0.6, f"evaluating on {int(hold.sum())} held-out labels")
        new = _score(taxonomy, head.predict_proba(X[hold]), y[hold], names, head.thresholds)
        metrics.update(new)
        live_was_fair = taxonomy.live_model is not None and (taxonomy.live_model.metrics or {}).get("n_holdout", 0) > 0
        if live_was_fair:
            P_live, live_thresholds = _live_on(taxonomy, X[hold], data.tag_ids)
            old = _score(taxonomy, P_live, y[hold], names, live_thresholds)
            metrics["live_score_same_holdout"] = old["score"]
            promote = new["score"] >= old["score"]
            reason = f"holdout score {new['score']:.4f} vs live {old['score']:.4f}"
        _progress(run, 0.65, "replaying the labelling order against random orders")
        tr = np.flatnonzero(train_mask)
        metrics["savings"] = replay_curve(
            X[tr], y[tr], np.argsort(label_ids[tr], kind="stable"), X[hold], y[hold], k,
            multilabel=taxonomy.multilabel, score=_replay_score(taxonomy, names))
    if head.thresholds is not None:
        metrics["thresholds"] = [float(t) for t in head.thresholds]
    metrics["decision"] = reason

    version = (ModelVersion.objects.filter(taxonomy=taxonomy).aggregate(m=Max("version"))["m"] or 0) + 1
    rel = f"{taxonomy.client_id}/{taxonomy.pk}/v{version}-run{run.pk}.npz"
    path = settings.TAGLOOP_MODEL_DIR / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    head.save(path)
    mv = ModelVersion.objects.create(
        taxonomy=taxonomy, version=version, backbone=vectors.backbone_name(), artifact=rel,
        tag_ids=data.tag_ids, metrics=metrics, n_labels=len(ids), label_watermark=watermark,
    )
    if promote:
        _progress(run, 0.75, "scoring all assets")
        suggesting.score(taxonomy, mv)
        suggesting.plan_queue(taxonomy, mv)
    with transaction.atomic():
        # The live pointer switches only now, after evaluation and rescoring are complete.
        if promote:
            Taxonomy.objects.filter(pk=taxonomy.pk).update(live_model=mv)
        # Labels that arrived during the run stay counted toward the next one.
        Taxonomy.objects.filter(pk=taxonomy.pk).update(
            labels_since_train=Greatest(F("labels_since_train") - consumed, Value(0))
        )
        TrainingRun.objects.filter(pk=run.pk).update(
            state=TrainingRun.State.PROMOTED if promote else TrainingRun.State.REJECTED,
            model_version=mv, metrics=metrics, progress=1.0, message=reason, finished=timezone.now(),
        )
    if promote:
        taxonomy.refresh_from_db()
        suggesting.prune_old_suggestions(taxonomy)
        from .. import tasks  # tasks import services: imported here to keep the graph acyclic

        transaction.on_commit(lambda: tasks.enqueue_recluster(taxonomy.client_id))  # stats follow the new model
    log.info("run %s: v%s %s (%s)", run.pk, version, "promoted" if promote else "rejected", reason)
