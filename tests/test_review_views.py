"""Review pages and JSON endpoints through Django's test client.

Queue-order tests use Suggestion rows written against a ModelVersion row made here (test
data; the ranking is what is under test). One test scores with a model from the real
training service.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.test import Client as HttpClient
from django.urls import reverse
from PIL import Image

from labeling.models import Asset, Label, ModelVersion, Suggestion, Tag, Taxonomy
from labeling.services import labels

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # Autouse runs before `world`, so its five users are hashed cheaply.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_asset(client, path: Path) -> Asset:
    data = path.read_bytes()
    with Image.open(path) as im:
        width, height = im.size
    asset = Asset(
        client=client, original_name=path.name, sha256=hashlib.sha256(data).hexdigest(),
        byte_size=len(data), width=width, height=height, format="JPEG",
    )
    asset.file.save(path.name, ContentFile(data), save=False)
    asset.save()
    return asset


@pytest.fixture
def assets(world, shoe_paths) -> list[Asset]:
    """Six acme images, two per brand."""
    return [make_asset(world.acme, p) for brand in shoe_paths["train"].values() for p in brand[:2]]


@pytest.fixture
def other_asset(world, shoe_paths) -> Asset:
    return make_asset(world.globex, shoe_paths["test"]["adidas"][0])


def tags_of(taxonomy: Taxonomy) -> dict[str, int]:
    return {t.name: t.pk for t in taxonomy.tags.all()}


@pytest.fixture
def model(world, assets) -> ModelVersion:
    """A live model whose suggestions have known uncertainties: asset i gets (i + 1) / 10,
    and its top-1 tag cycles adidas, converse, nike."""
    tag_ids = list(tags_of(world.brand).values())
    mv = ModelVersion.objects.create(
        taxonomy=world.brand, version=1, backbone="test", artifact="none", tag_ids=tag_ids,
        metrics={"accuracy": 0.875},
    )
    for i, asset in enumerate(assets):
        top = i % 3
        probs = [0.1, 0.1, 0.1]
        probs[top] = 0.8
        Suggestion.objects.create(
            asset=asset, taxonomy=world.brand, model_version=mv, probs=probs, top1_tag_id=tag_ids[top],
            top1_prob=0.8, margin=0.7, entropy=0.5, uncertainty=(i + 1) / 10,
        )
    world.brand.live_model = mv
    world.brand.save(update_fields=["live_model"])
    return mv


def as_user(user) -> HttpClient:
    c = HttpClient()
    c.force_login(user)
    return c


def urls(world, name: str) -> str:
    return reverse(name, args=[world.acme.slug, world.brand.pk])


def post_json(c: HttpClient, url: str, body) -> "HttpResponse":
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return c.post(url, data=data, content_type="application/json")


# --- pages -----------------------------------------------------------------------------


def test_home_redirects_to_the_only_client(world):
    r = as_user(world.olga).get(reverse("home"))
    assert r.status_code == 302 and r.url == reverse("client_home", args=["acme"])


def test_home_lists_several_clients(world):
    from labeling.models import Membership, Role

    Membership.objects.create(user=world.olga, client=world.globex, role=Role.VIEWER)
    r = as_user(world.olga).get(reverse("home"))
    assert r.status_code == 200
    assert b"Acme" in r.content and b"Globex" in r.content


def test_client_home_counts_and_admin_links(world, model, assets):
    labels.save_label(world.brand, assets[0], [model.tag_ids[0]], user=world.olga)
    page = reverse("client_home", args=["acme"])
    admin_html = as_user(world.alice).get(page).content.decode()
    assert reverse("review", args=["acme", world.brand.pk]) in admin_html
    assert "v1" in admin_html and "88% acc." in admin_html
    assert reverse("import_upload", args=["acme"]) in admin_html and reverse("admin:index") in admin_html
    # threshold 6, one label so far, of six images
    assert '<td class="num" data-label="Labels until retrain">5</td>' in admin_html
    assert "1 <span class=\"muted\">(17%)</span>" in admin_html
    operator_html = as_user(world.olga).get(page).content.decode()
    assert reverse("import_upload", args=["acme"]) not in operator_html
    assert reverse("admin:index") not in operator_html


def test_review_page_for_operator_and_read_only_viewer(world, model):
    r = as_user(world.olga).get(urls(world, "review"))
    assert r.status_code == 200
    config = json.loads(r.content.decode().split('id="review-config" type="application/json">')[1].split("</script>")[0])
    assert config["canLabel"] is True and config["multilabel"] is False
    assert [t["key"] for t in config["tags"]] == ["1", "2", "3"]
    viewer = as_user(world.vic).get(urls(world, "review"))
    assert viewer.status_code == 200 and b"Read-only" in viewer.content


def test_login_page_renders_and_logs_in(world):
    c = HttpClient()
    assert c.get(reverse("login")).status_code == 200
    r = c.post(reverse("login"), {"username": "olga", "password": "olga-pass-123"})
    assert r.status_code == 302
    assert c.get(reverse("home")).status_code == 302  # on to olga's only client


# --- queue -----------------------------------------------------------------------------


def test_queue_most_uncertain_first_and_confident_reversed(world, model):
    c = as_user(world.olga)
    uncertain = c.get(urls(world, "queue_json"), {"limit": 10}).json()
    u = [i["uncertainty"] for i in uncertain["items"]]
    assert u == sorted(u, reverse=True) and len(u) == 6 and u[0] == 0.6
    confident = c.get(urls(world, "queue_json"), {"order": "confident", "limit": 10}).json()
    assert [i["asset"] for i in confident["items"]] == [i["asset"] for i in reversed(uncertain["items"])]
    first = uncertain["items"][0]
    assert first["tags"][0]["prob"] == 0.8 and first["suggested"] == [first["tags"][0]["tag"]]
    assert first["image"] == reverse("asset_image", args=[first["asset"]])
    assert uncertain["tags"] == [
        {"id": t.pk, "name": t.name, "key": str(n)} for n, t in enumerate(world.brand.active_tags(), 1)
    ]
    assert uncertain["status"]["live_version"] == 1 and uncertain["status"]["unlabeled"] == 6


def test_queue_limit_and_exclude(world, model):
    c = as_user(world.olga)
    top = c.get(urls(world, "queue_json"), {"limit": 2}).json()["items"]
    assert len(top) == 2
    rest = c.get(urls(world, "queue_json"), {"limit": 10, "exclude": f"{top[0]['asset']},{top[1]['asset']}"}).json()
    assert len(rest["items"]) == 4 and not {i["asset"] for i in top} & {i["asset"] for i in rest["items"]}


@pytest.mark.parametrize(
    "params, field",
    [({"order": "random"}, "order"), ({"limit": "many"}, "limit"), ({"exclude": "1,x"}, "exclude")],
)
def test_queue_bad_parameters_name_the_field(world, model, params, field):
    r = as_user(world.olga).get(urls(world, "queue_json"), params)
    assert r.status_code == 400 and r.json()["field"] == field


def test_queue_without_model_spreads_over_the_library_by_content_hash_not_import_order(world, assets):
    items = as_user(world.vic).get(urls(world, "queue_json"), {"limit": 3}).json()["items"]
    by_hash = sorted(assets, key=lambda a: a.sha256)
    assert [i["asset"] for i in items] == [a.pk for a in by_hash[:3]]
    assert all(i["suggested"] == [] and i["uncertainty"] is None for i in items)


# --- labels ----------------------------------------------------------------------------


def test_accept_correct_and_manual_sources(world, model, assets):
    c = as_user(world.olga)
    item = c.get(urls(world, "queue_json"), {"limit": 1}).json()["items"][0]
    r = post_json(c, urls(world, "label_json"), {"asset": item["asset"], "tags": item["suggested"]})
    assert r.status_code == 200 and r.json()["source"] == "accepted"
    assert r.json()["status"]["labels_since_train"] == 1
    label = Label.objects.get(pk=r.json()["label"])
    assert label.user == world.olga and [t.pk for t in label.tags.all()] == item["suggested"]

    item = c.get(urls(world, "queue_json"), {"limit": 1}).json()["items"][0]
    other = next(t["tag"] for t in item["tags"] if t["tag"] not in item["suggested"])
    r = post_json(c, urls(world, "label_json"), {"asset": item["asset"], "tags": [other]})
    assert r.json()["source"] == "corrected" and r.json()["tags"] == [other]
    assert item["asset"] not in [i["asset"] for i in c.get(urls(world, "queue_json"), {"limit": 10}).json()["items"]]

    Suggestion.objects.filter(asset=assets[0]).delete()
    r = post_json(c, urls(world, "label_json"), {"asset": assets[0].pk, "tags": [model.tag_ids[0]]})
    assert r.json()["source"] == "manual"


@pytest.fixture
def label_url(world, model):
    return urls(world, "label_json")


@pytest.mark.parametrize(
    "body, field",
    [
        ("{not json", "body"),
        ([1, 2], "body"),
        ({"tags": [1]}, "asset"),
        ({"asset": "1", "tags": [1]}, "asset"),
        ({"asset": True, "tags": [1]}, "asset"),
        ({"asset": "ASSET"}, "tags"),
        ({"asset": "ASSET", "tags": "nike"}, "tags"),
        ({"asset": "ASSET", "tags": []}, "tags"),
    ],
)
def test_malformed_label_requests_name_the_field(world, assets, label_url, body, field):
    if isinstance(body, dict) and body.get("asset") == "ASSET":
        body = {**body, "asset": assets[0].pk}
    r = post_json(as_user(world.olga), label_url, body)
    assert r.status_code == 400 and r.json()["field"] == field, r.json()
    assert not Label.objects.exists()


def test_unknown_retired_and_double_tags_are_refused(world, assets, label_url):
    c = as_user(world.olga)
    ids = tags_of(world.brand)
    foreign = world.other_tax.tags.get().pk
    Tag.objects.filter(pk=ids["converse"]).update(retired=True)
    for tags in ([foreign], [ids["converse"]], [ids["adidas"], ids["nike"]], [999999], [10**23]):
        r = post_json(c, label_url, {"asset": assets[0].pk, "tags": tags})
        assert r.status_code == 400 and r.json()["field"] == "tags", (tags, r.json())
    assert not Label.objects.exists()


def test_ids_past_the_database_range_are_a_400_not_a_500(world, model, assets):
    # The default SQLite driver raises OverflowError on an int over 64 bits inside IN (...).
    c = as_user(world.olga)
    r = c.get(urls(world, "queue_json"), {"exclude": f"{assets[0].pk},{10**23}"})
    assert r.status_code == 400 and r.json()["field"] == "exclude"
    assert c.get(urls(world, "queue_json"), {"exclude": "-1"}).json()["field"] == "exclude"
    r = post_json(c, reverse("bulk_json", args=["acme", world.brand.pk]), {"assets": [10**23], "tags": [1]})
    assert r.status_code == 400 and r.json()["field"] == "assets"


def test_asset_of_another_client_is_404(world, label_url, other_asset):
    r = post_json(as_user(world.olga), label_url, {"asset": other_asset.pk, "tags": [tags_of(world.brand)["adidas"]]})
    assert r.status_code == 404 and r.json()["field"] == "asset"
    assert not Label.objects.exists()


def test_undo_restores_the_asset_to_the_queue(world, model, assets):
    c = as_user(world.olga)
    first = c.get(urls(world, "queue_json"), {"limit": 1}).json()["items"][0]
    post_json(c, urls(world, "label_json"), {"asset": first["asset"], "tags": first["suggested"]})
    assert c.get(urls(world, "queue_json"), {"limit": 1}).json()["items"][0]["asset"] != first["asset"]
    r = c.post(urls(world, "undo_json"))
    assert r.status_code == 200 and r.json()["undone"] == first["asset"]
    # the label and its undo both changed the training data (an undo never subtracts)
    assert r.json()["status"]["labels_since_train"] == 2 and r.json()["status"]["unlabeled"] == 6
    assert not Label.objects.exists()
    assert c.get(urls(world, "queue_json"), {"limit": 1}).json()["items"][0]["asset"] == first["asset"]
    assert c.post(urls(world, "undo_json")).json()["undone"] is None


def test_undo_of_a_relabel_brings_back_the_older_label(world, model, assets):
    c = as_user(world.olga)
    ids = tags_of(world.brand)
    post_json(c, urls(world, "label_json"), {"asset": assets[0].pk, "tags": [ids["nike"]]})
    post_json(c, urls(world, "label_json"), {"asset": assets[0].pk, "tags": [ids["adidas"]]})
    r = c.post(urls(world, "undo_json")).json()
    assert r["undone"] == assets[0].pk and r["previous_label_restored"] is True
    assert r["item"] is None  # still labeled: nothing to put back in the queue
    assert [t.name for t in Label.objects.get(asset=assets[0], is_current=True).tags.all()] == ["nike"]


def test_undo_sends_the_image_back_with_its_suggestion_and_leases_it_to_the_operator(world, model, assets):
    """Labeled in an earlier session (the page no longer holds it): the answer carries the
    queue item, so the page can show it first, and no other operator is served it meanwhile."""
    c = as_user(world.olga)
    last = c.get(urls(world, "queue_json"), {"limit": 6}).json()["items"][-1]
    post_json(c, urls(world, "label_json"), {"asset": last["asset"], "tags": last["suggested"]})
    r = c.post(urls(world, "undo_json")).json()
    item = r["item"]
    assert item["asset"] == last["asset"] and item["suggested"] == last["suggested"]
    assert [t["tag"] for t in item["tags"]] == [t["tag"] for t in last["tags"]]
    other = c.get(urls(world, "queue_json"), {"limit": 6}).json()["items"]
    assert last["asset"] in [i["asset"] for i in other]  # still hers
    served = as_user(world.alice).get(urls(world, "queue_json"), {"limit": 6}).json()["items"]
    assert last["asset"] not in [i["asset"] for i in served]


def test_status_json(world, model):
    s = as_user(world.vic).get(urls(world, "status_json")).json()
    assert s["live_version"] == 1 and s["live_accuracy"] == 0.875
    assert (s["live_score"], s["live_score_name"]) == (0.875, "acc.")
    assert s["labels_until_retrain"] == 6 and s["unlabeled"] == 6 and s["run"] is None


def test_the_status_says_why_a_run_failed_not_the_step_it_was_at(world, model):
    from labeling.models import TrainingRun

    run = TrainingRun.objects.create(taxonomy=world.brand, state=TrainingRun.State.FAILED, message="collecting labels",
                                     error="needs labels of at least 2 tags: all 3 training labels have one tag")
    status = lambda: as_user(world.vic).get(urls(world, "status_json")).json()["run"]  # noqa: E731
    assert status()["message"] == "needs labels of at least 2 tags: all 3 training labels have one tag"
    TrainingRun.objects.filter(pk=run.pk).update(error="OSError: disk full\nTraceback (most recent call last): ...")
    assert status()["message"] == "OSError: disk full"


def test_csrf_is_enforced_and_the_header_works(world, model, assets):
    c = HttpClient(enforce_csrf_checks=True)
    c.force_login(world.olga)
    body = json.dumps({"asset": assets[0].pk, "tags": [model.tag_ids[0]]})
    assert c.post(urls(world, "label_json"), body, content_type="application/json").status_code == 403
    c.get(urls(world, "review"))  # sets the csrftoken cookie, as the page does for review.js
    token = c.cookies["csrftoken"].value
    r = c.post(urls(world, "label_json"), body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert r.status_code == 200


# --- who may see and do what ----------------------------------------------------------


def test_viewer_reads_but_cannot_write(world, model, assets):
    c = as_user(world.vic)
    assert c.get(urls(world, "queue_json")).status_code == 200
    r = post_json(c, urls(world, "label_json"), {"asset": assets[0].pk, "tags": [model.tag_ids[0]]})
    assert r.status_code == 403 and "error" in r.json()
    assert c.post(urls(world, "undo_json")).status_code == 403
    assert not Label.objects.exists()


def test_other_client_sees_nothing_of_acme(world, model, assets):
    c = as_user(world.otto)
    for name in ("review", "queue_json", "status_json"):
        r = c.get(urls(world, name))
        assert r.status_code == 404, name
        assert b"adidas" not in r.content and assets[0].original_name.encode() not in r.content
    for name in ("label_json", "undo_json"):
        assert post_json(c, urls(world, name), {"asset": assets[0].pk, "tags": [model.tag_ids[0]]}).status_code == 404
    assert c.get(reverse("client_home", args=["acme"])).status_code == 404
    for name in ("asset_image", "asset_thumb"):
        assert c.get(reverse(name, args=[assets[0].pk])).status_code == 404
    assert not Label.objects.exists()


def test_otto_cannot_label_acme_assets_through_his_own_taxonomy(world, assets):
    url = reverse("label_json", args=["globex", world.other_tax.pk])
    tag = world.other_tax.tags.get().pk
    r = post_json(as_user(world.otto), url, {"asset": assets[0].pk, "tags": [tag]})
    assert r.status_code == 404 and not Label.objects.exists()


def test_member_can_fetch_images(world, assets):
    c = as_user(world.vic)
    for name in ("asset_image", "asset_thumb"):
        r = c.get(reverse(name, args=[assets[0].pk]))
        assert r.status_code == 200 and b"".join(r.streaming_content)[:2] == b"\xff\xd8"


def test_anonymous_gets_no_data(world, model, assets):
    c = HttpClient()
    for name in ("review",):
        r = c.get(urls(world, name))
        assert r.status_code == 302 and r.url.startswith(reverse("login"))
    for name in ("queue_json", "status_json"):
        r = c.get(urls(world, name))
        assert r.status_code == 401 and set(r.json()) == {"error"}
    for name in ("label_json", "undo_json"):
        r = post_json(c, urls(world, name), {"asset": assets[0].pk, "tags": [model.tag_ids[0]]})
        assert r.status_code in (401, 403)
    for name in ("asset_image", "asset_thumb"):
        assert c.get(reverse(name, args=[assets[0].pk])).status_code == 302
    assert c.get(reverse("client_home", args=["acme"])).status_code == 302
    assert not Label.objects.exists()


def test_wrong_methods_are_refused(world, model):
    c = as_user(world.olga)
    assert c.get(urls(world, "label_json")).status_code == 405
    assert c.get(urls(world, "undo_json")).status_code == 405
    assert c.post(urls(world, "queue_json")).status_code == 405


def test_read_only_pages_answer_head_requests_like_get(world, model):
    # Uptime checks and link checkers send HEAD; a 405 there reads as "site down".
    c = as_user(world.olga)
    for url in (reverse("home"), reverse("client_home", args=["acme"]), urls(world, "queue_json")):
        assert c.head(url).status_code == c.get(url).status_code != 405
    assert c.head(urls(world, "label_json")).status_code == 405


# --- with the real training service ---------------------------------------------------


def test_queue_ranks_by_a_trained_model(world, shoe_paths):
    """Seed labels, train with the real service, and the queue follows its uncertainty."""
    training = pytest.importorskip("labeling.services.training")
    seeded = {b: [make_asset(world.acme, p) for p in paths[:3]] for b, paths in shoe_paths["train"].items()}
    unlabeled = [make_asset(world.acme, p) for paths in shoe_paths["test"].values() for p in paths[:2]]
    ids = tags_of(world.brand)
    from labeling.services import vectors

    # Suggestions are written for embedded assets only; an import would have embedded them.
    vectors.embed_assets(list(Asset.objects.filter(client=world.acme).values_list("pk", flat=True)))
    for brand, group in seeded.items():
        for asset in group:
            labels.save_label(world.brand, asset, [ids[brand]], user=world.alice)
    run = training.train_now(world.brand)
    assert run.state == "promoted", (run.state, run.error, run.message)
    c = as_user(world.olga)
    items = c.get(urls(world, "queue_json"), {"limit": 10}).json()["items"]
    assert {i["asset"] for i in items} == {a.pk for a in unlabeled}
    u = [i["uncertainty"] for i in items]
    assert u == sorted(u, reverse=True)
    confident = c.get(urls(world, "queue_json"), {"order": "confident", "limit": 10}).json()["items"]
    assert [i["uncertainty"] for i in confident] == sorted(u)
    assert all(len(i["tags"]) == 3 and i["suggested"] for i in items)
