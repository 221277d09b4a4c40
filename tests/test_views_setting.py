"""TAGLOOP_VIEWS: the library's vectors from several crops of each photo (ml/multiview.py).

Switching it is like switching the backbone: the next retrain embeds the library again, the new
model reads only the new vectors, and search, clusters and batch predict follow."""
from __future__ import annotations

from django.core import checks
from django.core.files.uploadedfile import SimpleUploadedFile

from labeling.models import Asset, Suggestion, TrainingRun
from labeling.services import clusters, similarity, training, vectors
from tests._helpers import api

VIEWS = "center+tiles2:max"  # 5 crops an image: the cheapest spec with a tile block


def test_switching_the_views_re_embeds_the_library_and_everything_reads_the_new_vectors(world, trained, settings, shoe_paths):
    settings.TAGLOOP_VIEWS = VIEWS
    key = vectors.backbone_name()
    assert key == "efficientnet-lite0@center+tiles2.max"

    run = training.train_now(world.brand)
    world.brand.refresh_from_db()
    assert run.state == TrainingRun.State.PROMOTED, run.error
    assert "not comparable" in run.metrics["decision"]  # the old model read other vectors
    live = world.brand.live_model
    assert live.backbone == key
    assert set(Asset.objects.filter(client=world.acme).values_list("embedded_with", flat=True)) == {key}
    found, X = vectors.vectors_for(world.acme.pk, list(trained.assets))
    assert len(found) == len(trained.assets) and X.shape[1] == 2 * 1280
    assert Suggestion.objects.filter(model_version=live).count() == len(trained.assets)

    nike = shoe_paths["test"]["nike"][0]
    with nike.open("rb") as f:
        hits = similarity.search_image(world.brand, f, k=5)
    assert len(hits) == 5
    assert clusters.recluster(world.acme.pk).backbone == key

    files = [SimpleUploadedFile(nike.name, nike.read_bytes(), "image/jpeg")]
    url = f"/api/v1/clients/{world.acme.slug}/taxonomies/{world.brand.pk}/predict/"
    r = api(world.olga).post(url, {"images": files}, format="multipart")
    assert r.status_code == 200, r.content
    assert r.json()["version"] == live.version and len(r.json()["predictions"][0]["tags"]) == 3


def test_going_back_to_the_centre_crop_reuses_the_cached_vectors(world, trained, settings, monkeypatch):
    settings.TAGLOOP_VIEWS = VIEWS
    assert training.train_now(world.brand).state == TrainingRun.State.PROMOTED
    settings.TAGLOOP_VIEWS = "center"

    def no_cnn(*args, **kwargs):
        raise AssertionError("the centre-crop vectors of these files are cached by content")

    monkeypatch.setattr(type(vectors.get_embedder()), "embed_paths", no_cnn)
    run = training.train_now(world.brand)
    assert run.state == TrainingRun.State.PROMOTED, run.error
    assert set(Asset.objects.filter(client=world.acme).values_list("embedded_with", flat=True)) == {"efficientnet-lite0"}


def test_a_bad_views_setting_fails_the_start_up_check_and_names_it(settings):
    settings.TAGLOOP_VIEWS = "center+tile2:max"
    errors = [e for e in checks.run_checks() if e.id == "tagloop.E001"]
    assert len(errors) == 1 and "TAGLOOP_VIEWS" in errors[0].msg and "tile2" in errors[0].msg
    settings.TAGLOOP_VIEWS = "center,flip:mean+tiles2,tiles3:max"
    assert not [e for e in checks.run_checks() if e.id.startswith("tagloop.")]
