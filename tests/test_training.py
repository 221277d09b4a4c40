"""Retrain service: promotion rules, one run at a time, counters, idempotent claims."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from labeling.models import ImportJob, JobState, Label, ModelVersion, Suggestion, Taxonomy, TrainingRun
from labeling.services import dashboard, importing, labels, training
from ml import promotion
from tests.conftest import BRANDS, copy_shoes


def test_the_first_model_is_promoted_and_every_asset_gets_a_suggestion(world, trained):
    live = world.brand.live_model
    assert live.version == 1 and trained.run.model_version_id == live.pk
    rows = Suggestion.objects.filter(model_version=live)
    assert rows.count() == len(trained.assets)
    assert all(len(s.probs) == 3 and abs(sum(s.probs) - 1) < 1e-3 for s in rows)
    assert set(rows.filter(is_labeled=True).values_list("asset_id", flat=True)) == set(trained.seeded)
    # Six labels of real photos already tell the brands apart better than chance (1/3).
    unlabeled = rows.filter(is_labeled=False)
    right = sum(1 for s in unlabeled if s.top1_tag_id == trained.tags[trained.truth[s.asset_id]])
    assert right / unlabeled.count() > 0.5


@pytest.fixture
def big_library(world, shoe_paths, tmp_path):
    """75 real photos, all labeled correctly, so the fixed hold-out set is large enough to compare."""
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=25)
    importing.import_paths(world.acme, tmp_path / "lib")
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    assets = list(world.acme.assets.all())
    for a in assets:
        labels.save_label(world.brand, a, [tags[truth[a.original_name]]], source=Label.Source.IMPORTED)
    held = sum(promotion.is_holdout(a.sha256) for a in assets)
    assert held >= promotion.MIN_HOLDOUT, "precondition: enough held-out labels to compare models"
    return assets, truth, tags


def test_a_model_that_is_worse_on_the_held_out_labels_is_not_promoted(world, big_library):
    assets, truth, tags = big_library
    first = training.train_now(world.brand)
    assert first.state == TrainingRun.State.PROMOTED
    assert first.metrics["accuracy"] > 0.5 and first.metrics["n_holdout"] >= promotion.MIN_HOLDOUT
    lo, hi = first.metrics["macro_f1_ci95"]  # resampled once, at training, for the dashboard
    assert lo <= first.metrics["macro_f1"] <= hi and hi - lo > 0

    # Someone relabels every training asset with the wrong brand: the next model must lose.
    for a in assets:
        if not promotion.is_holdout(a.sha256):
            wrong = BRANDS[(BRANDS.index(truth[a.original_name]) + 1) % 3]
            labels.save_label(world.brand, a, [tags[wrong]], world.olga)
    second = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert second.state == TrainingRun.State.REJECTED, second.metrics
    assert world.brand.live_model_id == first.model_version_id
    assert second.metrics["accuracy"] < second.metrics["live_score_same_holdout"]
    shown = second.metrics["promotion"]
    assert not shown["promote"] and shown["p_worse"] < shown["alpha"] == 0.05
    assert shown["new_log_loss"] > shown["live_log_loss"] and ": worse (" in second.message
    # the dashboard's versions table says which went live and why
    rows = {v["version"]: v for v in dashboard.versions(world.brand)}
    assert rows[1]["went_live"] and rows[1]["live"] and rows[1]["decision"] == "first model"
    assert not rows[2]["went_live"] and not rows[2]["live"] and rows[2]["decision"] == second.message
    # The rejected version is kept for the record, but nothing is rescored with it.
    assert not Suggestion.objects.filter(model_version=second.model_version).exists()


def test_only_one_run_per_taxonomy_can_be_queued_or_running(world):
    first = training.request_run(world.brand, force=True)
    assert first is not None
    assert training.request_run(world.brand, force=True) is None
    TrainingRun.objects.filter(pk=first.pk).update(state=TrainingRun.State.RUNNING)
    assert training.request_run(world.brand, force=True) is None


def test_a_run_is_requested_only_once_enough_new_labels_arrived(world, trained):
    world.brand.retrain_threshold = 3
    world.brand.save()
    unlabeled = [a for a in trained.assets if a not in trained.seeded]
    for n, asset_id in enumerate(unlabeled[:3], start=1):
        assert training.request_run(world.brand) is None
        labels.save_label(world.brand, trained.assets[asset_id], [trained.tags[trained.truth[asset_id]]], world.olga)
    assert training.request_run(world.brand) is not None


def test_labels_that_arrive_during_a_run_count_toward_the_next(world, trained, monkeypatch):
    unlabeled = [a for a in trained.assets if a not in trained.seeded]
    for asset_id in unlabeled[:4]:
        labels.save_label(world.brand, trained.assets[asset_id], [trained.tags[trained.truth[asset_id]]], world.olga)
    real_train_head = training.train_head

    def train_while_two_more_labels_arrive(*args, **kwargs):
        for asset_id in unlabeled[4:6]:
            labels.save_label(world.brand, trained.assets[asset_id], [trained.tags["nike"]], world.olga)
        return real_train_head(*args, **kwargs)

    monkeypatch.setattr(training, "train_head", train_while_two_more_labels_arrive)
    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.labels_consumed == 4
    assert world.brand.labels_since_train == 2
    assert run.model_version.n_labels == 6 + 4  # the two late labels were not learned from


def test_executing_the_same_run_twice_trains_once(world, trained):
    run = training.train_now(world.brand)
    again = training.execute_run(run.pk)
    assert again.state == run.state
    assert ModelVersion.objects.filter(taxonomy=world.brand).count() == 2


def test_a_run_without_labels_fails_with_its_reason_and_backs_off(world):
    run = training.train_now(world.brand)
    assert run.state == TrainingRun.State.FAILED
    assert "no labels" in run.error
    world.brand.labels_since_train = 100
    world.brand.save()
    assert training.request_run(world.brand) is None  # not again right away
    TrainingRun.objects.filter(pk=run.pk).update(finished=timezone.now() - training.FAILED_BACKOFF * 2)
    assert training.request_run(world.brand) is not None


def test_a_run_refused_for_one_tag_is_retried_as_soon_as_a_second_tag_is_labeled(world, trained):
    from labeling.services import labels

    world.brand.live_model = None
    world.brand.save(update_fields=["live_model"])
    Label.objects.filter(taxonomy=world.brand).delete()
    nike = [a for a, b in sorted(trained.truth.items()) if b == "nike"]
    for a in nike[:3]:
        labels.save_label(world.brand, trained.assets[a], [trained.tags["nike"]], user=world.olga, notify=False)
    refused = training.train_now(world.brand)
    assert refused.state == TrainingRun.State.FAILED and refused.error.startswith(training.NEEDS_TWO_TAGS)
    Taxonomy.objects.filter(pk=world.brand.pk).update(labels_since_train=100)
    assert training.request_run(world.brand) is None  # the same labels: still refused, so backed off
    adidas = next(a for a, b in sorted(trained.truth.items()) if b == "adidas")
    labels.save_label(world.brand, trained.assets[adidas], [trained.tags["adidas"]], user=world.olga, notify=False)
    assert training.request_run(world.brand) is not None  # learnable now: no ten-minute wait


def test_a_run_or_import_whose_worker_died_stops_blocking_after_the_stale_timeout(world, settings):
    run = training.request_run(world.brand, force=True)
    old = timezone.now() - timedelta(seconds=settings.TAGLOOP_RUN_STALE_SECONDS + 5)
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.RUNNING, heartbeat=old)
    job = ImportJob.objects.create(client=world.acme, source="/x", state=JobState.RUNNING, heartbeat=old)
    alive = ImportJob.objects.create(client=world.acme, source="/y", state=JobState.RUNNING, heartbeat=timezone.now())
    assert training.fail_stale_runs() == 2
    assert TrainingRun.objects.get(pk=run.pk).state == TrainingRun.State.FAILED
    job.refresh_from_db(), alive.refresh_from_db()
    assert job.state == JobState.FAILED and "worker lost" in job.error
    assert alive.state == JobState.RUNNING
    assert training.request_run(world.brand, force=True) is not None


def test_a_multi_label_taxonomy_is_evaluated_with_each_models_own_thresholds(world, shoe_paths, tmp_path):
    from labeling.models import Tag, Taxonomy

    style = Taxonomy.objects.create(client=world.acme, name="style", kind=Taxonomy.Kind.MULTI)
    tags = {b: Tag.objects.create(taxonomy=style, name=b).pk for b in BRANDS}
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=25)
    importing.import_paths(world.acme, tmp_path / "lib")
    for a in world.acme.assets.all():
        labels.save_label(style, a, [tags[truth[a.original_name]]], source=Label.Source.IMPORTED)
    first = training.train_now(style)
    second = training.train_now(style)
    assert first.state == TrainingRun.State.PROMOTED, first.error
    assert len(first.metrics["thresholds"]) == 3 and first.metrics["micro_f1"] > 0.5
    # Same labels, same data: the retrained model scores the same as the live one and stays "not worse".
    assert second.state == TrainingRun.State.PROMOTED, second.metrics
    assert second.metrics["live_score_same_holdout"] == pytest.approx(second.metrics["micro_f1"])
    assert second.metrics["promotion"]["p_worse"] == 1.0 and "not shown worse" in second.metrics["decision"]


def test_a_stricter_promotion_alpha_is_read_from_the_environment_and_a_bad_one_is_named(tmp_path):
    import os
    import subprocess
    import sys

    code = "import django; django.setup(); from django.conf import settings; print(settings.TAGLOOP_PROMOTION_ALPHA)"
    env = {**os.environ, "TAGLOOP_VAR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "tagloop.settings"}
    for value, printed in (("", "0.05"), ("0.2", "0.2")):
        done = subprocess.run([sys.executable, "-c", code], env={**env, "TAGLOOP_PROMOTION_ALPHA": value},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == printed, done.stderr
    for bad in ("0", "1.5", "five percent"):
        done = subprocess.run([sys.executable, "-c", code], env={**env, "TAGLOOP_PROMOTION_ALPHA": bad},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "TAGLOOP_PROMOTION_ALPHA" in done.stderr and repr(bad) in done.stderr


def test_each_evaluated_model_replays_its_labelling_order_against_random_orders(world, shoe_paths, tmp_path):
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=25)
    importing.import_paths(world.acme, tmp_path / "lib")
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    # A deliberately bad order: every adidas first, then converse, then nike.
    for a in sorted(world.acme.assets.all(), key=lambda a: (BRANDS.index(truth[a.original_name]), a.pk)):
        labels.save_label(world.brand, a, [tags[truth[a.original_name]]], world.olga)
    run = training.train_now(world.brand)
    sv = run.metrics["savings"]
    assert sv["labels"][-1] == run.metrics["n_train"]
    assert len(sv["queue"]) == len(sv["random"]) == len(sv["labels"])
    assert sv["queue"][-1] == sv["random"][-1]  # all the labels, whatever the order
    # the first heads had seen one brand only: below every random order, and behind on average
    assert sv["queue"][0] <= sv["random_min"][0]
    assert sum(sv["queue"][:-1]) < sum(sv["random"][:-1])
    # the dashboard shows the live model's replay
    world.brand.refresh_from_db()
    assert dashboard.live_report(world.brand)["savings"] == sv


def test_after_a_tag_is_retired_the_live_model_is_compared_on_the_tags_left_its_rows_summing_to_one(world, trained):
    import numpy as np

    from labeling.models import Tag
    from labeling.services import evaluation, suggesting, vectors

    Tag.objects.filter(pk=trained.tags["adidas"]).update(retired=True)
    active = list(world.brand.active_tags().values_list("id", flat=True))
    _, X = vectors.vectors_for(world.acme.pk, sorted(trained.assets))
    full = suggesting.load_head(world.brand.live_model).predict_proba(X)
    kept = full[:, [world.brand.live_model.tag_ids.index(t) for t in active]]
    assert (kept.sum(axis=1) < 0.95).any()  # precondition: the retired tag held a real share
    P, _ = evaluation._live_on(world.brand, X, active)
    np.testing.assert_allclose(P, kept / kept.sum(axis=1, keepdims=True), rtol=1e-5)


def test_the_dashboard_still_counts_accepted_suggestions_after_their_rows_are_pruned(world, trained):
    from labeling.models import Suggestion

    open_ids = [a for a in sorted(trained.assets) if a not in trained.seeded][:5]
    shown = {s.asset_id: s for s in Suggestion.objects.filter(model_version=world.brand.live_model, asset_id__in=open_ids)}
    for i, a in enumerate(open_ids):  # four accepted as suggested, one corrected
        tag = shown[a].top1_tag_id if i < 4 else next(t for t in trained.tags.values() if t != shown[a].top1_tag_id)
        labels.save_label(world.brand, trained.assets[a], [tag], world.olga, notify=False)
    assert dashboard.agreement(world.brand)["by_version"] == [{"version": 1, "accepted": 4, "corrected": 1, "rate": 0.8}]
    for _ in range(2):  # two more versions: v1's suggestions are pruned
        assert training.train_now(world.brand).state in ("promoted", "rejected")
    assert not Suggestion.objects.filter(model_version__version=1, model_version__taxonomy=world.brand).exists()
    assert dashboard.agreement(world.brand)["by_version"] == [{"version": 1, "accepted": 4, "corrected": 1, "rate": 0.8}]
