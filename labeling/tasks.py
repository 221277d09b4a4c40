"""Celery tasks: thin wrappers over services. Each is idempotent, so redelivery
(acks_late, a worker killed mid-task, the sweep re-enqueueing) does no harm; recluster alone
is never redelivered (see there)."""
from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.db.models import Q
from django.utils import timezone

from .models import ImportJob, JobState, Taxonomy, TrainingRun

log = logging.getLogger(__name__)
REENQUEUE_AFTER = timedelta(seconds=60)  # a queued row older than this probably lost its message
# ... but a queued run may only be waiting for a busy train worker: send it again at most this
# often, or every sweep would add one more (harmless, but growing) message to the queue.
REENQUEUE_EVERY = timedelta(minutes=10)


@shared_task(name="labeling.tasks.check_retrain")
def check_retrain(taxonomy_id: int) -> int | None:
    from .services import training

    taxonomy = Taxonomy.objects.filter(pk=taxonomy_id).first()
    run = training.request_run(taxonomy) if taxonomy else None
    return run.pk if run else None


@shared_task(name="labeling.tasks.train", bind=True)
def train(self, run_id: int, recheck: bool = False) -> str:
    redelivered = recheck or bool((self.request.delivery_info or {}).get("redelivered"))  # its worker died?
    return take_run(run_id, redelivered, recheck, look_again=lambda: train.apply_async(
        (run_id,), {"recheck": True}, countdown=REDELIVERED_RECHECK_SECONDS, retry=False))


REDELIVERED_RECHECK_SECONDS = 65  # past training.REDELIVERED_STALE_SECONDS


def take_run(run_id: int, redelivered: bool, recheck: bool, look_again) -> str:
    """Run it, unless another worker has it. A redelivered message finding the run still
    beating (its worker killed seconds ago, or alive) asks ``look_again`` once: by then a dead
    worker's heartbeat is stale and the run is taken up, a live one's is fresh and it is left."""
    from .services import training

    run = training.execute_run(run_id, redelivered)
    if redelivered and not recheck and run.state == TrainingRun.State.RUNNING:
        try:
            look_again()
        except Exception as exc:  # no broker: the sweep fails the run after TAGLOOP_RUN_STALE_SECONDS
            log.warning("run %s: could not schedule a second look: %s", run_id, exc)
    return run.state


@shared_task(name="labeling.tasks.run_import")
def run_import(job_id: int) -> str:
    from .services import importing

    job = importing.run_job(job_id)
    if job.n_created:
        enqueue_recluster(job.client_id)  # new images join clusters, the map and the index
    return job.state


@shared_task(name="labeling.tasks.sweep")
def sweep() -> dict:
    """Periodic safety net (Celery beat): finds what a lost message or a broker outage left
    behind — due retrains, queued runs and imports — and enqueues it again."""
    from .services import training

    stale = training.fail_stale_runs()
    started = 0
    for taxonomy in Taxonomy.objects.all().only("id", "labels_since_train", "retrain_threshold"):
        if taxonomy.labels_since_train >= max(1, taxonomy.retrain_threshold) and training.request_run(taxonomy):
            started += 1
    runs = _due(TrainingRun, TrainingRun.State.QUEUED)
    for run_id in runs:
        training.enqueue(run_id)
    jobs = _due(ImportJob, JobState.QUEUED)
    for job_id in jobs:
        send(run_import, job_id, f"import {job_id}")
    return {"stale_runs": stale, "runs_requested": started, "runs_reenqueued": len(runs), "imports_reenqueued": len(jobs)}


def _due(model, queued: str) -> list[int]:
    """Queued rows whose message is probably lost, stamped as sent now. A queued row has no
    heartbeat yet: the field records when the sweep last sent it, so a row that is only
    waiting behind a long job gets one more message every REENQUEUE_EVERY, not every sweep."""
    now = timezone.now()
    due = model.objects.filter(state=queued, created__lt=now - REENQUEUE_AFTER).filter(
        Q(heartbeat__isnull=True) | Q(heartbeat__lt=now - REENQUEUE_EVERY))
    ids = list(due.values_list("id", flat=True))
    model.objects.filter(pk__in=ids, state=queued).update(heartbeat=now)
    return ids


# Acknowledged on receipt and never redelivered: the largest step holds every vector in memory
# several times, and a build killed for memory would otherwise be requeued (acks_late with
# reject_on_worker_lost) and crash again, forever, on the worker that also trains. A lost
# build is asked for again by the next import, promotion, large bulk action or map view.
@shared_task(name="labeling.tasks.recluster", acks_late=False, reject_on_worker_lost=False)
def recluster(client_id: int) -> int | None:
    """Keep one client's clusters, FAISS index and 2-D map in step with its vectors and
    models (labeling.services.clusters.update): a promotion only refreshes cluster stats;
    k-means, the index and t-SNE run only after vectors were added."""
    from .services import clusters, similarity

    clustering, action = clusters.update(client_id)
    if action == "built" or (action != "waiting" and clusters.map_stale(client_id)):
        similarity.get_index(client_id)  # adds newly embedded vectors (or rebuilds for a new backbone)
        clusters.compute_map(client_id)
    if action == "built" and clustering.stats.get("store_version") != clusters.store_version(client_id):
        enqueue_recluster(client_id)  # vectors arrived during the build, whose messages found it busy
    return clustering.pk if clustering else None


def send(task, arg: int, what: str) -> bool:
    """Publish one message; False when the broker is unreachable (never raises: the caller's
    work is done or recorded, and the sweep or the next request asks again)."""
    try:
        task.apply_async((arg,), retry=False)
        return True
    except Exception as exc:  # kombu raises several types for an unreachable broker
        log.warning("broker unreachable, %s skipped: %s", what, exc)
        return False


def enqueue_recluster(client_id: int) -> bool:
    """Ask a worker to recluster; False when the broker is unreachable (never raises: the
    caller's import or promotion has already succeeded, and the next one asks again)."""
    return send(recluster, client_id, f"recluster of client {client_id}")


@shared_task(name="labeling.tasks.rescore_live")
def rescore_live(taxonomy_id: int) -> int:
    """The live model's suggestions over the tags active now, after a tag was retired or brought
    back (Tag.save asks on commit); idempotent: a second run writes the same rows."""
    from .services import suggesting

    taxonomy = Taxonomy.objects.filter(pk=taxonomy_id).first()
    if taxonomy is None:
        return 0
    n = suggesting.rescore_live(taxonomy)
    if n:
        enqueue_recluster(taxonomy.client_id)  # cluster stats follow the rows (clusters._stats_key)
    return n


def enqueue_rescore(taxonomy_id: int) -> bool:
    """False when the broker is unreachable: the review page and API still leave the retired
    tag out of each row they show (suggesting.current_view); the order follows at the next
    promotion, or the next change of a tag."""
    return send(rescore_live, taxonomy_id, f"rescore of taxonomy {taxonomy_id}")


@shared_task(name="labeling.tasks.second_look")
def second_look(taxonomy_id: int) -> bool:
    """Fresh second-look scores for a taxonomy with too many labels to score in a page load
    (labeling.services.second_look); idempotent: current scores are not computed again."""
    from .services import second_look as service

    taxonomy = Taxonomy.objects.filter(pk=taxonomy_id).first()
    return service.refresh(taxonomy) if taxonomy else False


def enqueue_second_look(taxonomy_id: int) -> bool:
    """False when the broker is unreachable (the page says so; the next load asks again)."""
    return send(second_look, taxonomy_id, f"second look of taxonomy {taxonomy_id}")
