"""Retraining under real-world interference: a worker that loses its run, labels and imports
that land while a new model is scored, a changed backbone, deleted assets, one-tag labels."""
from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from django.db import transaction as real_transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from labeling.models import Asset, Label, ModelVersion, Suggestion, Tag, Taxonomy, TrainingRun
from labeling.services import importing, labels, queue, suggesting, training, vectors
from ml.heads import train_head
from tests.conftest import BRANDS, copy_shoes


def _label(world, trained, asset_ids) -> None:
    for a in asset_ids:
        labels.save_label(world.brand, trained.assets[a], [trained.tags[trained.truth[a]]], world.olga)


def _unlabeled(trained) -> list[int]:
    return [a for a in trained.assets if a not in trained.seeded]


def _age_heartbeat(run_id: int) -> None:
    """What TAGLOOP_RUN_STALE_SECONDS without a heartbeat looks like."""
    old = timezone.now() - timedelta(seconds=settings.TAGLOOP_RUN_STALE_SECONDS + 1)
    TrainingRun.objects.filter(pk=run_id).update(heartbeat=old)


# -- a run that lost its worker ------------------------------------------------------------
def test_a_run_the_sweep_failed_neither_promotes_its_model_nor_replaces_the_newer_one(world, trained, monkeypatch):
    unlabeled = _unlabeled(trained)
    _label(world, trained, unlabeled[:3])
    real_train_head = training.train_head
    newer: dict = {}

    def train_while_the_sweep_gives_up_and_another_run_finishes(*args, **kwargs):
        if not newer:  # the stale run only; the newer one trains undisturbed
            newer["run"] = None
            stuck = TrainingRun.objects.get(state=TrainingRun.State.RUNNING)
            _age_heartbeat(stuck.pk)
            assert training.fail_stale_runs() == 1
            _label(world, trained, unlabeled[3:6])
            newer["run"] = training.execute_run(training.request_run(world.brand, force=True).pk)
            _label(world, trained, unlabeled[6:8])  # counted toward the run after B
        return real_train_head(*args, **kwargs)

    monkeypatch.setattr(training, "train_head", train_while_the_sweep_gives_up_and_another_run_finishes)
    stale = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert newer["run"].state == TrainingRun.State.PROMOTED
    assert stale.state == TrainingRun.State.FAILED and training.WORKER_LOST in stale.error
    assert world.brand.live_model_id == newer["run"].model_version_id  # 12 labels, not the stale 9
    assert world.brand.labels_since_train == 2  # the stale run subtracted nothing
    # the stale run's version was discarded with its rows, so nothing is left to prune later
    assert set(ModelVersion.objects.filter(taxonomy=world.brand).values_list("version", flat=True)) == {1, 2}
    assert stale.model_version is None


def test_a_run_beats_its_heartbeat_while_it_scores_the_library(world, trained, monkeypatch):
    monkeypatch.setattr(suggesting, "SCORE_CHUNK", 8)  # 24 assets: three chunks
    real_write = suggesting._write
    beats = []

    def write_noting_the_heartbeat(*args, **kwargs):
        beats.append(TrainingRun.objects.get(state=TrainingRun.State.RUNNING).heartbeat)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(suggesting, "_write", write_noting_the_heartbeat)
    run = training.train_now(world.brand)
    assert run.state == TrainingRun.State.PROMOTED
    assert len(beats) == 3 and beats == sorted(set(beats))  # a fresh beat before every chunk


def test_a_run_that_fails_while_scoring_leaves_no_version_and_no_suggestions_behind(world, trained, monkeypatch):
    _label(world, trained, _unlabeled(trained)[:3])
    live = world.brand.live_model_id
    versions = set(ModelVersion.objects.filter(taxonomy=world.brand).values_list("pk", flat=True))
    files = lambda: set(settings.TAGLOOP_MODEL_DIR.rglob("*"))  # noqa: E731
    before, real_score = files(), suggesting.score

    def score_then_fail(taxonomy, mv, **kwargs):
        real_score(taxonomy, mv, **kwargs)  # the new version's suggestions are written ...
        raise OSError("disk full")  # ... and then the worker fails before the switch

    monkeypatch.setattr(suggesting, "score", score_then_fail)
    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.state == TrainingRun.State.FAILED and "OSError: disk full" in run.error
    assert world.brand.live_model_id == live and run.model_version is None
    assert set(ModelVersion.objects.filter(taxonomy=world.brand).values_list("pk", flat=True)) == versions
    assert not Suggestion.objects.filter(asset__client=world.brand.client).exclude(model_version_id__in=versions).exists()
    assert files() == before  # its model file went too


def test_a_redelivered_message_resumes_a_run_whose_worker_died(world, trained):
    run = training.request_run(world.brand, force=True)
    # A worker claimed it and was killed: the row says running, the message comes back.
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.RUNNING, started=timezone.now(),
                                                 heartbeat=timezone.now())
    assert training.execute_run(run.pk).state == TrainingRun.State.RUNNING  # still beating: not ours
    _age_heartbeat(run.pk)
    assert training.execute_run(run.pk).state == TrainingRun.State.PROMOTED


def test_a_message_the_broker_hands_out_again_takes_up_its_run_within_a_minute_not_fifteen(world, trained):
    from labeling import tasks

    run = training.request_run(world.brand, force=True)
    killed = timezone.now() - timedelta(seconds=5)  # its worker was killed by a restart just now
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.RUNNING, started=killed, heartbeat=killed)
    asked: list[str] = []  # the broker's delayed message, recorded instead of sent
    assert tasks.take_run(run.pk, False, False, lambda: asked.append("again")) == "running"
    assert not asked, "a first delivery leaves a beating run to the sweep"

    assert tasks.take_run(run.pk, True, False, lambda: asked.append("again")) == "running"
    assert asked == ["again"], "a redelivery that finds a fresh heartbeat looks again in a minute"
    a_minute_later = timezone.now() - timedelta(seconds=tasks.REDELIVERED_RECHECK_SECONDS)
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat=a_minute_later)
    assert tasks.train.apply((run.pk,), {"recheck": True}).get() == TrainingRun.State.PROMOTED


def test_a_run_failed_because_its_worker_was_lost_is_requested_again_without_backoff(world, trained):
    world.brand.labels_since_train = 50
    world.brand.save()
    run = training.request_run(world.brand)
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.RUNNING, started=timezone.now())
    _age_heartbeat(run.pk)
    assert training.fail_stale_runs() == 1
    assert training.request_run(world.brand) is not None


# -- what happens while the new model is scored ------------------------------------------------
def test_a_label_saved_while_a_retrain_writes_suggestions_is_labeled_on_the_new_model(world, trained, monkeypatch):
    victim = _unlabeled(trained)[0]
    fired = []

    class LabelBeforeTheFirstWrite:
        """The first write transaction of the rescoring starts after the operator's label
        committed, but after the rescoring read which assets are labeled."""

        @staticmethod
        def atomic(*args, **kwargs):
            if not fired:
                fired.append(victim)
                _label(world, trained, [victim])
            return real_transaction.atomic(*args, **kwargs)

    monkeypatch.setattr(suggesting, "transaction", LabelBeforeTheFirstWrite)
    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.state == TrainingRun.State.PROMOTED and fired
    assert Suggestion.objects.get(model_version=world.brand.live_model, asset_id=victim).is_labeled
    assert victim not in [i["asset"] for i in queue.review_batch(world.brand, limit=50)]


def test_assets_imported_during_a_retrain_get_suggestions_from_the_new_model(
    world, trained, monkeypatch, shoe_paths, tmp_path
):
    real_plan = suggesting.plan_queue
    imported = []

    def plan_while_an_import_finishes(taxonomy, mv):
        copy_shoes(shoe_paths, tmp_path / "late", per_brand=1, split="test")
        job = importing.import_paths(world.acme, tmp_path / "late")  # scored by the old live model
        imported.extend(Asset.objects.filter(import_job_id=job.pk).values_list("id", flat=True))
        return real_plan(taxonomy, mv)

    monkeypatch.setattr(suggesting, "plan_queue", plan_while_an_import_finishes)
    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.state == TrainingRun.State.PROMOTED and len(imported) == len(BRANDS)
    assert Suggestion.objects.filter(model_version=world.brand.live_model, asset_id__in=imported).count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_deleted_asset_does_not_break_retraining(world, trained):
    gone = _unlabeled(trained)[0]
    Asset.objects.filter(pk=gone).delete()  # its vector stays in the append-only store
    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.state == TrainingRun.State.PROMOTED, run.error
    assert Suggestion.objects.filter(model_version=world.brand.live_model).count() == len(trained.assets) - 1


def test_pruning_old_suggestions_deletes_them_without_loading_them_and_keeps_the_labels(world, trained):
    asset_id = _unlabeled(trained)[0]
    _label(world, trained, [asset_id])
    label = Label.objects.get(asset_id=asset_id, is_current=True)
    assert label.suggestion.model_version_id == trained.run.model_version_id
    assert training.train_now(world.brand).state == TrainingRun.State.PROMOTED
    world.brand.refresh_from_db()
    with CaptureQueriesContext(connection) as queries:
        pruned = suggesting.prune_old_suggestions(world.brand, keep=1)
    assert pruned == len(trained.assets)
    assert not Suggestion.objects.filter(model_version=trained.run.model_version).exists()
    label.refresh_from_db()
    assert label.suggestion is None and label.is_current
    assert not [q["sql"] for q in queries.captured_queries if "SELECT" in q["sql"] and '"probs"' in q["sql"]]
    assert len(queries.captured_queries) <= 5


# -- labels that cannot make a model -------------------------------------------------------------
def test_labels_of_a_single_tag_make_no_model_until_a_second_tag_is_labeled(world, shoe_library):
    assets, truth = shoe_library
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    by_brand = {b: [a for a, t in sorted(truth.items()) if t == b] for b in BRANDS}
    for a in by_brand["nike"][:3]:
        labels.save_label(world.brand, assets[a], [tags["nike"]], world.olga)
    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.state == TrainingRun.State.FAILED and "needs labels of at least 2 tags" in run.message
    assert world.brand.live_model is None and not Suggestion.objects.exists()
    for a in by_brand["adidas"][:3]:
        labels.save_label(world.brand, assets[a], [tags["adidas"]], world.olga)
    assert training.train_now(world.brand).state == TrainingRun.State.PROMOTED


def test_a_multi_label_taxonomy_whose_labels_all_carry_the_same_tags_makes_no_model(world, shoe_library):
    assets, _ = shoe_library
    style = Taxonomy.objects.create(client=world.acme, name="style", kind=Taxonomy.Kind.MULTI)
    both = [Tag.objects.create(taxonomy=style, name=n).pk for n in ("shoe", "photo")]
    for a in list(assets)[:4]:
        labels.save_label(style, assets[a], both, world.olga)
    run = training.train_now(style)
    assert run.state == TrainingRun.State.FAILED and "needs labels of at least 2 tags" in run.error
    labels.save_label(style, assets[list(assets)[4]], both[:1], world.olga)  # "photo" now has a negative
    assert training.train_now(style).state == TrainingRun.State.PROMOTED


# -- a changed backbone ----------------------------------------------------------------------
def _pretend_embedded_with(client_id: int, backbone: str) -> None:
    """The library as it was before TAGLOOP_BACKBONE changed: its vectors are another
    backbone's (the content cache still makes re-embedding cheap)."""
    root = settings.TAGLOOP_VECTOR_DIR / str(client_id)
    shutil.move(root / vectors.backbone_name(), root / backbone)
    Asset.objects.filter(client_id=client_id).update(embedded_with=backbone)


def test_after_a_backbone_change_the_new_model_scores_the_whole_library(world, trained):
    _pretend_embedded_with(world.acme.pk, "older-net")
    ModelVersion.objects.filter(pk=world.brand.live_model_id).update(backbone="older-net")
    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.state == TrainingRun.State.PROMOTED, run.error
    assert world.brand.live_model.backbone == vectors.backbone_name()
    assert Suggestion.objects.filter(model_version=world.brand.live_model).count() == len(trained.assets)
    assert set(Asset.objects.values_list("embedded_with", flat=True)) == {vectors.backbone_name()}


def test_a_live_model_of_another_backbone_is_not_compared_and_retraining_succeeds(world, shoe_paths, tmp_path):
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=25)
    importing.import_paths(world.acme, tmp_path / "lib")
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    for a in world.acme.assets.all():
        labels.save_label(world.brand, a, [tags[truth[a.original_name]]], source=Label.Source.IMPORTED)
    # a live head of a 1408-d backbone, evaluated fairly in its day
    rng = np.random.default_rng(0)
    head = train_head(rng.normal(size=(30, 1408)).astype(np.float32), np.arange(30) % 3, 3)
    settings.TAGLOOP_MODEL_DIR.mkdir(parents=True, exist_ok=True)
    head.save(settings.TAGLOOP_MODEL_DIR / "old.npz")
    world.brand.live_model = ModelVersion.objects.create(
        taxonomy=world.brand, version=1, backbone="efficientnet-lite2", artifact="old.npz",
        tag_ids=list(tags.values()), metrics={"n_holdout": 12})
    world.brand.save()
    run = training.train_now(world.brand)
    assert run.state == TrainingRun.State.PROMOTED, run.error
    assert "not comparable" in run.metrics["decision"] and "live_score_same_holdout" not in run.metrics


def test_the_sweep_resends_a_queued_run_once_not_every_minute_while_the_train_worker_is_busy(world, no_broker):
    from datetime import timedelta

    from django.utils import timezone

    from labeling import tasks
    from labeling.models import TrainingRun

    run = TrainingRun.objects.create(taxonomy=world.brand, trigger="threshold")
    TrainingRun.objects.filter(pk=run.pk).update(created=timezone.now() - timedelta(minutes=2))
    assert tasks.sweep()["runs_reenqueued"] == 1
    assert tasks.sweep()["runs_reenqueued"] == 0  # a minute later: still waiting for the worker
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat=timezone.now() - tasks.REENQUEUE_EVERY)
    assert tasks.sweep()["runs_reenqueued"] == 1 and no_broker["train"] == 2  # then sent again


def test_the_sweep_resends_a_queued_import_once_not_every_minute_while_the_import_worker_is_busy(world, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from labeling import tasks
    from labeling.models import ImportJob

    sent: list[int] = []
    monkeypatch.setattr(tasks.run_import, "apply_async", lambda args, **kw: sent.append(args[0]))
    job = ImportJob.objects.create(client=world.acme, source="upload")
    ImportJob.objects.filter(pk=job.pk).update(created=timezone.now() - timedelta(minutes=2))
    assert tasks.sweep()["imports_reenqueued"] == 1 and sent == [job.pk]
    assert tasks.sweep()["imports_reenqueued"] == 0 and sent == [job.pk]  # still queued behind a long import
    ImportJob.objects.filter(pk=job.pk).update(heartbeat=timezone.now() - tasks.REENQUEUE_EVERY)
    assert tasks.sweep()["imports_reenqueued"] == 1 and sent == [job.pk, job.pk]


def test_a_retrain_after_a_restore_without_the_vector_files_embeds_the_labeled_images_again(world, trained):
    first = training.train_now(world.brand)
    assert first.state == TrainingRun.State.PROMOTED, first.error
    # the database and the media came back from a backup, TAGLOOP_VAR/vectors did not
    shutil.rmtree(settings.TAGLOOP_VECTOR_DIR / str(world.acme.pk))

    run = training.train_now(world.brand)

    assert run.state == TrainingRun.State.PROMOTED, run.error
    assert run.metrics["n_train"] + run.metrics["n_holdout"] == \
        first.metrics["n_train"] + first.metrics["n_holdout"], "every labeled image trained again"
