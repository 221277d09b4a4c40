"""Make an earlier version live again: a rollback (after a bad bulk action was undone, the model
trained on it should stop serving) or a roll-forward (a version the gate kept out).

A client admin asks; a worker does it, as a TrainingRun with trigger ROLLBACK whose
model_version is the target from the start. So the taxonomy's one-active-run rule, the
heartbeat, the stale sweep and the dashboard's run list apply to it as to a retrain: a retrain
and a rollback never interleave their writes to the live pointer. The worker scores the library
with the version (as a promotion does), then switches the live pointer in one transaction.

Nothing is retrained and no label is consumed: the retrain counter keeps counting, and the next
retrain is compared with the version made live here (services.evaluation reads the live pointer).
"""
from __future__ import annotations

from typing import Callable

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from ..models import ModelVersion, Taxonomy, TrainingRun
from . import localmatch, suggesting, training, vectors

Progress = Callable[[float, str], None]
BY = "made_live_by"  # the run's metrics: the username of the admin who asked


def why_not(taxonomy: Taxonomy, mv: ModelVersion) -> str | None:
    """Why ``mv`` can't be made live now, or None. Asked before a run is queued (a 409 that says
    why) and again by the worker (the file may have gone meanwhile)."""
    if taxonomy.live_model_id == mv.pk:
        return f"v{mv.version} is already live"
    if mv.backbone != vectors.backbone_name():
        # its head reads another backbone's features, which the library no longer has
        return f"v{mv.version} reads {mv.backbone} features; this server embeds with {vectors.backbone_name()}"
    if not suggesting.artifact_path(mv).is_file():
        return f"v{mv.version}'s model file is missing ({mv.artifact}); retrain instead"
    return None


def request(taxonomy: Taxonomy, mv: ModelVersion, user) -> TrainingRun | None:
    """Queue the run (its message says who asked), or None when a run is already active."""
    # who asked is kept in the metrics too: progress overwrites the message, and a run
    # re-claimed after its worker died must still say it at the end
    who = getattr(user, "username", None) or "an administrator"
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(taxonomy=taxonomy, trigger=training.ROLLBACK, model_version=mv,
                                             message=_made_live(mv, who), metrics={BY: who})
    except IntegrityError:  # one_active_run: a retrain or another rollback holds the slot
        return None
    transaction.on_commit(lambda: training.enqueue(run.pk))
    return run


def _made_live(mv: ModelVersion, who: str) -> str:
    return f"v{mv.version} made live by {who}"


def execute(run: TrainingRun, owned: QuerySet[TrainingRun], progress: Progress) -> None:
    """The worker's part (from training._execute). ``owned``: the run's row while this worker
    owns it; ``progress`` beats the heartbeat and raises RunAbandoned once the run is not ours."""
    taxonomy = Taxonomy.objects.get(pk=run.taxonomy_id)
    mv = ModelVersion.objects.filter(pk=run.model_version_id, taxonomy=taxonomy).first()
    who = (run.metrics or {}).get(BY) or "an administrator"
    if mv is None:
        raise training.Refused(f"made live by {who}: not done, the version was deleted")
    requested = _made_live(mv, who)
    if problem := why_not(taxonomy, mv):
        raise training.Refused(f"{requested}: not done, {problem}")
    if localmatch.weight_of(mv) > 0 and not localmatch.index_path(mv).is_file():
        # pruned with its suggestions (prune_old_suggestions): the head alone serves now
        requested += "; its keypoint index was pruned, so it serves without local matching"
    progress(0.05, f"scoring all assets with v{mv.version}")
    suggesting.score(taxonomy, mv, progress=lambda done, total: progress(
        0.05 + 0.85 * done / max(total, 1), f"scoring assets with v{mv.version} {done}/{total}"))
    suggesting.plan_queue(taxonomy, mv)
    with transaction.atomic():
        # The run's row first, and only while owned (as training._publish does): a run the sweep
        # failed must not move the live pointer. The run's metrics are the version's (the header
        # reads the live version's own), so the run list shows the scores of the model now serving.
        if not owned.update(state=TrainingRun.State.PROMOTED, metrics={**(mv.metrics or {}), BY: who},
                            progress=1.0, message=requested, finished=timezone.now()):
            raise training.RunAbandoned(f"run {run.pk} lost its claim before the switch")
        Taxonomy.objects.filter(pk=taxonomy.pk).update(live_model=mv)
    training.after_promotion(taxonomy, mv)
