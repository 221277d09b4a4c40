"""Making an earlier model version live again (services.rollback, POST .../models/<id>/promote/):
a job with a TrainingRun row, run by the worker, that rescores the library with the version
and switches the live pointer; the next retrain is judged against it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from labeling.models import Label, ModelVersion, Suggestion, TrainingRun
from labeling.services import dashboard, labels, queue, rollback, suggesting, training, vectors
from tests._helpers import api

pytestmark = pytest.mark.usefixtures("no_broker", "fast_passwords")


def promote_url(world, version_id: int, tax=None) -> str:
    tax = tax or world.brand
    return f"/api/v1/clients/{tax.client.slug}/taxonomies/{tax.pk}/models/{version_id}/promote/"


@pytest.fixture
def two_versions(world, shoe_library, monkeypatch) -> SimpleNamespace:
    """acme's 24 real shoes: v1 trained on 4 labels per brand, v2 on 2 more per brand (live or
    kept out by the gate); held-out labels compared from 2 on, as 24 images hold only a few."""
    from ml import promotion

    monkeypatch.setattr(promotion, "MIN_HOLDOUT", 1)
    assets, truth = shoe_library
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    # the held-out bucket's images first, so that both versions are evaluated on a few
    by_brand = {b: sorted((a for a, t in truth.items() if t == b),
                          key=lambda a: (not promotion.is_holdout(assets[a].sha256), a)) for b in tags}
    for start, stop in ((0, 4), (4, 6)):
        for brand, ids in by_brand.items():
            for a in ids[start:stop]:
                labels.save_label(world.brand, assets[a], [tags[brand]], user=world.olga, source=Label.Source.IMPORTED)
        run = training.train_now(world.brand)
        assert run.state in ("promoted", "rejected"), run.error
    world.brand.refresh_from_db()
    v1, v2 = (ModelVersion.objects.get(taxonomy=world.brand, version=v) for v in (1, 2))
    live, other = (v2, v1) if world.brand.live_model_id == v2.pk else (v1, v2)
    return SimpleNamespace(assets=assets, truth=truth, tags=tags, live=live, other=other)


def test_an_admin_makes_the_other_version_live_and_the_worker_rescores_the_library_with_it(
        world, two_versions, django_capture_on_commit_callbacks, no_broker):
    target, before = two_versions.other, two_versions.live
    # its rows may have been pruned since: the worker must write them again
    suggesting.delete_suggestions(Suggestion.objects.filter(model_version=target))
    with django_capture_on_commit_callbacks(execute=True):
        r = api(world.alice).post(promote_url(world, target.pk))
    assert r.status_code == 202, r.json()
    body = r.json()
    assert (body["state"], body["trigger"], body["model_version"]) == ("queued", "rollback", target.pk)
    assert body["message"] == f"v{target.version} made live by alice"
    assert no_broker["train"] == 1  # enqueued for the worker, on commit

    run = training.execute_run(body["id"])  # what the Celery task runs
    world.brand.refresh_from_db()
    assert run.state == "promoted" and run.message == f"v{target.version} made live by alice"
    assert run.metrics == {**target.metrics, "made_live_by": "alice"} and run.model_version_id == target.pk
    assert world.brand.live_model_id == target.pk
    assert Suggestion.objects.filter(model_version=target).count() == len(two_versions.assets)
    item = queue.review_batch(world.brand, limit=1)[0]
    shown = Suggestion.objects.get(model_version=target, asset_id=item["asset"])
    assert item["uncertainty"] == round(shown.uncertainty, 4)
    header = queue.queue_status(world.brand)  # the header's score is the version's own
    assert header["live_version"] == target.version
    assert header["live_score"] == target.metrics.get("accuracy")
    row = next(v for v in dashboard.versions(world.brand) if v["id"] == target.pk)
    assert row["live"] and row["went_live"] and row["made_live"] == run.message
    assert before.pk not in {v["id"] for v in dashboard.versions(world.brand) if v["live"]}


def test_the_next_retrain_is_compared_with_the_version_made_live(world, two_versions, monkeypatch):
    target = two_versions.other
    assert (target.metrics or {}).get("n_holdout"), "precondition: the version was evaluated on held-out labels"
    run = rollback.request(world.brand, target, world.alice)
    assert training.execute_run(run.pk).state == "promoted"
    loaded: list[int] = []
    real_load = suggesting.load_head
    monkeypatch.setattr(suggesting, "load_head", lambda mv: loaded.append(mv.pk) or real_load(mv))
    labeled = set(Label.objects.filter(taxonomy=world.brand, is_current=True).values_list("asset_id", flat=True))
    for a in [a for a in sorted(two_versions.assets) if a not in labeled][:3]:
        brand = two_versions.truth[a]
        labels.save_label(world.brand, two_versions.assets[a], [two_versions.tags[brand]], user=world.olga)
    retrain = training.train_now(world.brand)
    assert retrain.state in ("promoted", "rejected"), retrain.error
    assert "vs live" in retrain.message  # compared, not promoted unchecked
    assert target.pk in loaded and two_versions.live.pk not in loaded


def test_a_version_whose_file_is_gone_is_refused_up_front_and_by_the_worker(world, two_versions):
    target = two_versions.other
    path = suggesting.artifact_path(target)
    run = rollback.request(world.brand, target, world.alice)
    path.unlink()  # pruned by hand after the request
    done = training.execute_run(run.pk)
    world.brand.refresh_from_db()
    assert done.state == "failed" and "model file is missing" in done.message and "alice" in done.message
    assert world.brand.live_model_id == two_versions.live.pk
    r = api(world.alice).post(promote_url(world, target.pk))
    assert r.status_code == 409 and "model file is missing" in r.json()["detail"]
    # the failed rollback says nothing about the labels: a due retrain is not held back
    world.brand.labels_since_train = world.brand.retrain_threshold
    world.brand.save(update_fields=["labels_since_train"])
    assert training.request_run(world.brand) is not None


def _fake_version(world, version: int, with_file: bool, settings) -> ModelVersion:
    mv = ModelVersion.objects.create(taxonomy=world.brand, version=version, backbone=vectors.backbone_name(),
                                     artifact=f"{world.acme.pk}/{world.brand.pk}/v{version}.npz",
                                     tag_ids=[], metrics={"accuracy": 0.5})
    if with_file:  # the API checks that the file is there; only the worker reads it
        path = settings.TAGLOOP_MODEL_DIR / mv.artifact
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"head")
    return mv


def test_only_admins_of_the_client_may_make_a_version_live(world, lib, settings):
    mv = _fake_version(world, 2, with_file=True, settings=settings)
    assert api(world.olga).post(promote_url(world, mv.pk)).status_code == 403
    assert api(world.vic).post(promote_url(world, mv.pk)).status_code == 403
    # another client's people, and a version of another client's taxonomy, find nothing
    assert api(world.otto).post(promote_url(world, mv.pk)).status_code == 404
    other = ModelVersion.objects.create(taxonomy=world.other_tax, version=1, backbone=vectors.backbone_name(),
                                        artifact="x.npz", tag_ids=[])
    assert api(world.alice).post(promote_url(world, other.pk)).status_code == 404
    assert api(world.alice).post(promote_url(world, other.pk, tax=world.other_tax)).status_code == 404
    assert not TrainingRun.objects.exists()


def test_a_live_version_or_an_active_run_is_a_409(world, lib, settings):
    mv = _fake_version(world, 2, with_file=True, settings=settings)
    live = api(world.alice).post(promote_url(world, lib.mv.pk))
    assert live.status_code == 409 and "already live" in live.json()["detail"]
    active = TrainingRun.objects.create(taxonomy=world.brand, trigger="threshold")
    busy = api(world.alice).post(promote_url(world, mv.pk))
    assert busy.status_code == 409 and busy.json()["id"] == active.pk
    missing = _fake_version(world, 3, with_file=False, settings=settings)
    active.delete()
    gone = api(world.alice).post(promote_url(world, missing.pk))
    assert gone.status_code == 409 and "missing" in gone.json()["detail"]
