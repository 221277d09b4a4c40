"""Retraining: request a run, claim it, train a head, evaluate, promote unless shown worse (ml.promotion).

A retrain can never be lost: the label counter is bumped in the label's own transaction,
the check is enqueued on commit and again by the periodic sweep, and a worker claims a run
with a conditional UPDATE (queued -> running), so a run enqueued twice executes once. Every
later write of the run is conditional on that claim, so a worker that lost its run (no
heartbeat for TAGLOOP_RUN_STALE_SECONDS) can never publish its model.
"""
from __future__ import annotations

import logging
import traceback
from datetime import datetime, timedelta
from typing import Callable

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q, QuerySet, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from ml.heads import LinearHead, train_head

from ..models import Asset, ImportJob, JobState, Label, ModelVersion, Suggestion, Taxonomy, TrainingRun
from . import evaluation, localmatch, suggesting, vectors
# what a run learns from and is judged on, in one place (the run and the up-front check)
from .training_data import Dataset, collect

log = logging.getLogger(__name__)

FAILED_BACKOFF = timedelta(minutes=10)  # the sweep does not hammer a run that keeps failing
WORKER_LOST = "worker lost (no heartbeat)"  # a failure of the worker, not of the run: no backoff
NO_LABELS = "no labels to learn from"
NEEDS_TWO_TAGS = "needs labels of at least 2 tags"
ROLLBACK = "rollback"  # trigger of a run that makes an earlier version live (services.rollback)


# -- requesting -------------------------------------------------------------------------
def request_run(taxonomy: Taxonomy, trigger: str = "threshold", force: bool = False) -> TrainingRun | None:
    """Create a queued run when enough new labels arrived (or ``force``); None when not due or
    when one is already queued/running (the database's partial unique index decides)."""
    taxonomy.refresh_from_db(fields=["labels_since_train", "retrain_threshold"])
    if not force:
        if taxonomy.labels_since_train < max(1, taxonomy.retrain_threshold):
            return None
        # a failed rollback says nothing about the labels: it must not hold a retrain back
        last = TrainingRun.objects.filter(taxonomy=taxonomy).exclude(trigger=ROLLBACK).order_by("-id").first()
        if last and last.state == TrainingRun.State.FAILED and last.finished and \
                not last.error.startswith(WORKER_LOST) and timezone.now() - last.finished < FAILED_BACKOFF and \
                not (last.error.startswith((NO_LABELS, NEEDS_TWO_TAGS)) and not_ready(taxonomy) is None):
            # A run refused for its labels is retried as soon as the labels can make a model:
            # a first batch of one tag must not hold the next retrain back for ten minutes.
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

    return tasks.send(tasks.train, run_id, f"run {run_id} (left queued for the sweep)")


def train_now(taxonomy: Taxonomy, trigger: str = "manual") -> TrainingRun:
    """Create and execute a run in this process (demo, management commands, tests)."""
    with transaction.atomic():
        run = TrainingRun.objects.create(taxonomy=taxonomy, trigger=trigger)
    return execute_run(run.pk)


def fail_stale_runs() -> int:
    """A run (or import) whose worker died stops blocking after TAGLOOP_RUN_STALE_SECONDS
    without a heartbeat; its error says so, and a new run can be requested."""
    cutoff = timezone.now() - timedelta(seconds=settings.TAGLOOP_RUN_STALE_SECONDS)
    lost = {"error": WORKER_LOST, "finished": timezone.now()}
    runs = TrainingRun.objects.filter(state=TrainingRun.State.RUNNING, heartbeat__lt=cutoff).update(
        state=TrainingRun.State.FAILED, **lost
    )
    imports = ImportJob.objects.filter(state=JobState.RUNNING, heartbeat__lt=cutoff).update(
        state=JobState.FAILED, **lost
    )
    return runs + imports


# -- executing --------------------------------------------------------------------------
class RunAbandoned(Exception):
    """This worker no longer owns its run: the sweep failed it for want of a heartbeat, or a
    redelivered message re-claimed it. Whatever the worker still holds must not be published."""


class Refused(Exception):
    """The labels cannot make a useful model (yet); the text is the run's message."""


def _owned(run: TrainingRun) -> QuerySet[TrainingRun]:
    """The run's row while this worker owns it. ``started`` is the claim's token: a re-claim
    writes a new one, so the old worker's conditional updates then match no row."""
    return TrainingRun.objects.filter(pk=run.pk, state=TrainingRun.State.RUNNING, started=run.started)


def _progress(run: TrainingRun, fraction: float, message: str) -> None:
    """Report progress; it is the heartbeat too. Raises RunAbandoned once the run is not ours."""
    run.progress, run.message = fraction, message
    if not _owned(run).update(progress=fraction, message=message[:300], heartbeat=timezone.now()):
        raise RunAbandoned(f"run {run.pk} is no longer running on this worker")


def _beating(run: TrainingRun, fraction: float, what: str) -> Callable[[int, int], None]:
    """A progress callback for a long step (embedding, scoring): every batch beats the heartbeat,
    so the stale sweep never fails a run that is working."""
    return lambda done, total: _progress(run, fraction, f"{what} {done}/{total}")


# A message the broker hands out again (RabbitMQ at once when a worker's connection drops;
# Redis after its visibility timeout) says its worker is probably gone: its run is taken up
# after this long without a heartbeat, not after TAGLOOP_RUN_STALE_SECONDS (a systemd restart
# SIGKILLs a long retrain; the run then blocked its taxonomy for 15 minutes, and a manual one was
# lost). Not at once: a retrain past Redis' visibility hour is still beating, and must not be
# restarted every hour. A redelivered message that finds a fresh heartbeat looks again once
# it would have gone stale (tasks.train). Were the first worker alive after all, the new claim's
# token makes its writes match no row: it stops at its next heartbeat.
REDELIVERED_STALE_SECONDS = 60


def _claim(run_id: int, redelivered: bool = False) -> datetime | None:
    """queued -> running, or a running run whose worker stopped beating (killed, then its
    message redelivered): the claim's time is the token, or None when not ours to run."""
    now = timezone.now()
    stale = now - timedelta(seconds=REDELIVERED_STALE_SECONDS if redelivered else settings.TAGLOOP_RUN_STALE_SECONDS)
    claimable = Q(state=TrainingRun.State.QUEUED) | Q(state=TrainingRun.State.RUNNING, heartbeat__lt=stale)
    claimed = TrainingRun.objects.filter(claimable, pk=run_id).update(
        state=TrainingRun.State.RUNNING, started=now, heartbeat=now, progress=0.0
    )
    return now if claimed else None


def _fail(run: TrainingRun, error: str, message: str = "") -> None:
    """Only while owned: a worker that lost its run must not overwrite its new owner's state."""
    shown = {"message": message[:300]} if message else {}
    _owned(run).update(state=TrainingRun.State.FAILED, error=error[:5000], finished=timezone.now(), **shown)


def execute_run(run_id: int, redelivered: bool = False) -> TrainingRun:
    token = _claim(run_id, redelivered)
    run = TrainingRun.objects.select_related("taxonomy", "taxonomy__client").get(pk=run_id)
    if token is None:
        return run  # another worker has it, or it already ran
    run.started = token
    try:
        _execute(run)
    except RunAbandoned as exc:
        log.warning("training run %s abandoned: %s", run_id, exc)
    except Refused as exc:
        _fail(run, str(exc), message=str(exc))
    except Exception as exc:
        log.exception("training run %s failed", run_id)
        _fail(run, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
    run.refresh_from_db()
    return run


def not_ready(taxonomy: Taxonomy) -> str | None:
    """Why a run would be refused now (no labels, or training labels of one tag only), or None.
    Asked before a manual run is queued: a run that can only fail would hold the taxonomy's one
    run slot, then its failure backoff would hold back the automatic retrains. Checks what
    _execute trains on: the same collect and the same split, but for near-duplicate groups. The
    check runs in the request (4 s of search at 10k labels), and its answer does not depend on
    them: rule 3 of the split gives every tag with a label a training label, group or not."""
    data = collect(taxonomy, near_duplicates=False)
    if len(data.y) == 0:
        return NO_LABELS
    try:
        _check_learnable(data.y[data.train_mask], taxonomy.multilabel, _rows(data.known, data.train_mask))
    except Refused as exc:
        return str(exc)
    return None


def _rows(known: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if known is None else known[mask]


def _check_learnable(y: np.ndarray, multilabel: bool, known: np.ndarray | None = None) -> None:
    """Refuse labels that cannot make a useful model. With one class a head is certain of it on
    every asset (uncertainty 0): the queue would show nothing useful first and bulk accept would
    apply that tag everywhere. A multi-label head needs a tag that some labeled assets are
    known to lack (a label older than a tag says nothing about it)."""
    if multilabel:
        negatives = (y == 0) if known is None else (y == 0) & known
        if not ((y.sum(axis=0) > 0) & negatives.any(axis=0)).any():
            raise Refused(f"{NEEDS_TWO_TAGS}: every training label has the same tags")
    elif len(np.unique(y)) < 2:
        raise Refused(f"{NEEDS_TWO_TAGS}: all {len(y)} training labels have one tag")


def _note_split(metrics: dict, data: Dataset, names: list[str]) -> None:
    """Say in the run's decision (the dashboard's "Why") when held-out labels trained instead,
    and keep the assets, so the dashboard's gallery does not show them as never trained on.
    The held-out assets are kept too: with near-duplicate groups the split is no longer a rule
    on one label the gallery could apply again (training_data), so it reads the run's own."""
    # [] when nothing was compared (every label trained): the export says "not held out"
    metrics["holdout_assets"] = data.asset_ids[data.holdout].tolist() if data.compared else []
    sizes = np.unique(data.groups, return_counts=True)[1] if data.groups is not None else np.ones(0, dtype=int)
    # a transitive chain of "duplicates" (catalogue shots on one white background) would skew
    # the held-out set quietly: the run says how many groups there were, and the largest
    metrics["near_duplicates"] = {"groups": int((sizes > 1).sum()), "largest": int(sizes.max(initial=1))}
    if note := data.split_note(names):
        metrics["decision"] = f"{metrics['decision']}; {note}"
        metrics["holdout_moved"] = data.asset_ids[data.moved].tolist()


def _embedded(run: TrainingRun, taxonomy: Taxonomy, data: Dataset, watermark: int) -> tuple[Dataset, np.ndarray]:
    """The labeled assets that have a vector of the current backbone (embedding those that have
    none yet), and their vectors in the dataset's order. ``data`` was collected without
    near-duplicate groups; collected again with them once every asset has its vector (an asset
    with none would have no group, and its twin could be split from it)."""
    missing = list(
        Asset.objects.filter(pk__in=data.asset_ids.tolist())
        .exclude(embedded_with=vectors.backbone_name())
        .values_list("id", flat=True)
    )
    if missing:
        _progress(run, 0.1, f"embedding {len(missing)} assets")
        vectors.embed_assets(missing, progress=_beating(run, 0.1, "embedding labeled assets"))
    stored = vectors.store_for(taxonomy.client_id).ids()  # which, not the vectors: read once, below
    if lost := sorted(set(data.asset_ids.tolist()) - set(stored.tolist()) - set(missing)):
        # marked embedded, but the store lacks them (a restore of the database and media
        # without TAGLOOP_VAR/vectors): embedded again rather than trained without, or a run
        # of "0 training labels" that says nothing of why
        log.warning("run %s: %d labeled assets had no stored vector; embedding them again", run.pk, len(lost))
        Asset.objects.filter(pk__in=lost).update(embedded_with="")
        _progress(run, 0.1, f"embedding {len(lost)} assets whose vectors were missing")
        vectors.embed_assets(lost, progress=_beating(run, 0.1, "embedding labeled assets"))
    data = collect(taxonomy, watermark)
    found, X = vectors.vectors_for(taxonomy.client_id, data.asset_ids)  # in the order asked
    return data.subset(np.isin(data.asset_ids, found)), X


def _fit_local(run: TrainingRun, taxonomy: Taxonomy, data: Dataset, X: np.ndarray,
               train_mask: np.ndarray) -> localmatch.Fitted | None:
    """The taxonomy's local evidence (opt-in): index and weight from the training labels only."""
    if not localmatch.enabled(taxonomy):
        return None
    _progress(run, 0.4, "matching keypoints of labeled assets")
    return localmatch.fit(data.asset_ids[train_mask], data.y[train_mask], data.label_ids[train_mask], X[train_mask],
                          len(data.tag_ids), progress=lambda what, d, t: _progress(run, 0.4, f"{what} {d}/{t}"))


def _save_version(run: TrainingRun, taxonomy: Taxonomy, head: LinearHead, data: Dataset, metrics: dict,
                  watermark: int) -> ModelVersion:
    _progress(run, 0.7, "saving the model")  # a run that is no longer ours stops before writing
    version = (ModelVersion.objects.filter(taxonomy=taxonomy).aggregate(m=Max("version"))["m"] or 0) + 1
    rel = f"{taxonomy.client_id}/{taxonomy.pk}/v{version}-run{run.pk}.npz"
    path = settings.TAGLOOP_MODEL_DIR / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    head.save(path)
    return ModelVersion.objects.create(
        taxonomy=taxonomy, version=version, backbone=vectors.backbone_name(), artifact=rel,
        tag_ids=data.tag_ids, metrics=metrics, n_labels=len(data.asset_ids), label_watermark=watermark,
    )


def _embed_library(run: TrainingRun, taxonomy: Taxonomy) -> None:
    """After a TAGLOOP_BACKBONE change the library's vectors are the old backbone's: the new
    model could score only the labeled assets embedded above, and every other asset would lose
    its suggestion. embed_assets skips what is done, so a re-claimed run resumes."""
    stale = vectors.embedded_elsewhere(taxonomy.client_id)
    if stale:
        _progress(run, 0.72, f"embedding {len(stale)} library assets with {vectors.backbone_name()}")
        vectors.embed_assets(stale, progress=_beating(run, 0.72, "embedding the library"))


def _publish(run: TrainingRun, taxonomy: Taxonomy, mv: ModelVersion, promote: bool, consumed: int) -> None:
    """Score a promoted version, then switch run state, live pointer and counter together."""
    if promote:
        _embed_library(run, taxonomy)
        _progress(run, 0.75, "scoring all assets")
        suggesting.score(taxonomy, mv, progress=_beating(run, 0.75, "scoring assets"))
        suggesting.plan_queue(taxonomy, mv)
    with transaction.atomic():
        # The run's own row first, and only while this worker owns it: a run the sweep failed
        # (or another worker re-claimed) must not move the live pointer or the counter.
        if not _owned(run).update(
            state=TrainingRun.State.PROMOTED if promote else TrainingRun.State.REJECTED, model_version=mv,
            metrics=mv.metrics, progress=1.0, message=mv.metrics["decision"], finished=timezone.now(),
        ):
            raise RunAbandoned(f"run {run.pk} lost its claim before the switch")
        if promote:
            Taxonomy.objects.filter(pk=taxonomy.pk).update(live_model=mv)
        # Labels that arrived during the run stay counted toward the next one.
        Taxonomy.objects.filter(pk=taxonomy.pk).update(
            labels_since_train=Greatest(F("labels_since_train") - consumed, Value(0))
        )


def _discard(mv: ModelVersion) -> None:
    """The version of an abandoned or failed run is nobody's: its rows, file and record go."""
    suggesting.delete_suggestions(Suggestion.objects.filter(model_version=mv))
    suggesting.artifact_path(mv).unlink(missing_ok=True)
    localmatch.delete(mv)
    mv.delete()


def after_promotion(taxonomy: Taxonomy, mv: ModelVersion) -> None:
    """Catch up on what changed while the new version was scored. The run is finished, so
    nothing here beats (or checks) its heartbeat."""
    suggesting.score_unscored(taxonomy, mv)  # imported meanwhile: scored by the old model only
    suggesting.reconcile_labeled(taxonomy, mv)  # labels and undos committed during the writes
    taxonomy.refresh_from_db()
    suggesting.prune_old_suggestions(taxonomy)
    from .. import tasks  # tasks import services: imported here to keep the graph acyclic

    transaction.on_commit(lambda: tasks.enqueue_recluster(taxonomy.client_id))  # stats follow the new model


def _execute(run: TrainingRun) -> None:
    if run.trigger == ROLLBACK:  # no training: an earlier version goes live
        from . import rollback  # it imports this module

        return rollback.execute(run, _owned(run), lambda f, m: _progress(run, f, m))
    taxonomy = Taxonomy.objects.select_related("live_model").get(pk=run.taxonomy_id)
    consumed = taxonomy.labels_since_train
    watermark = Label.objects.filter(taxonomy=taxonomy).aggregate(m=Max("id"))["m"] or 0
    _owned(run).update(labels_consumed=consumed)
    _progress(run, 0.05, "collecting labels")
    data = collect(taxonomy, watermark, near_duplicates=False)  # grouped once embedded (_embedded)
    if len(data.asset_ids) == 0:
        raise Refused(NO_LABELS)
    data, X = _embedded(run, taxonomy, data, watermark)
    tags = taxonomy.tags.in_bulk(data.tag_ids)
    names = [tags[t].path for t in data.tag_ids]

    train_mask = data.train_mask
    known = _rows(data.known, train_mask)
    _check_learnable(data.y[train_mask], taxonomy.multilabel, known)
    _progress(run, 0.3, f"training on {int(train_mask.sum())} labels")
    head = train_head(X[train_mask], data.y[train_mask], len(data.tag_ids), multilabel=taxonomy.multilabel, seed=0,
                      known=known)
    local = _fit_local(run, taxonomy, data, X, train_mask)
    promote, metrics = evaluation.evaluate(taxonomy, head, local, data, X, train_mask, names,
                                           progress=lambda f, m: _progress(run, f, m))
    _note_split(metrics, data, names)
    mv = _save_version(run, taxonomy, head, data, metrics, watermark)
    try:
        if local is not None:
            localmatch.save(mv, local)
        _publish(run, taxonomy, mv, promote, consumed)
    except Exception:
        # Abandoned, or failed while scoring: the version never reached its run (the switch is
        # one transaction), so it must not stay behind as a version the dashboard lists.
        _discard(mv)
        raise
    if promote:
        after_promotion(taxonomy, mv)
    log.info("run %s: v%s %s (%s)", run.pk, mv.version, "promoted" if promote else "rejected", metrics["decision"])
