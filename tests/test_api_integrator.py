"""The API as a script sees it: paths without their slash, JSON misses, accepting suggestions
next to people's labels, undoing a bulk action, runs that cannot start, predict's options."""
from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labeling.models import BulkAction, Label, Tag, Taxonomy, TrainingRun
from labeling.services import labels
from tests._helpers import api

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker", "private_uploads")]


def base(tax) -> str:
    return f"/api/v1/clients/{tax.client.slug}/taxonomies/{tax.pk}/"


def test_a_post_without_the_trailing_slash_is_redirected_with_its_method_and_the_label_is_saved(world, lib):
    url = base(world.brand) + "labels"
    c = api(world.olga, token=True)
    r = c.post(url, {"asset": lib.assets[0].pk, "tags": [lib.tags["nike"]]}, format="json")
    # 308: clients repeat the POST with its body (a 301 is followed as a GET: the label was lost)
    assert r.status_code == 308 and r["Location"].endswith(url + "/")
    r = c.post(url, {"asset": lib.assets[0].pk, "tags": [lib.tags["nike"]]}, format="json", follow=True)
    assert r.status_code == 201 and r.json()["tags"] == [lib.tags["nike"]]
    assert Label.objects.get(asset=lib.assets[0], is_current=True).tags.get().pk == lib.tags["nike"]


def test_api_paths_that_match_nothing_answer_json_404(world, lib):
    c = api(world.olga, token=True)
    for path in ("/api/v1/nothing-here/", f"/api/v1/clients/acme/assets/{'9' * 20}/", "/api/v1/clients/acme/nothing"):
        r = c.get(path)
        assert r.status_code == 404 and r["Content-Type"] == "application/json" and r.json()["detail"], path
    # a view's own 404 keeps its message
    r = c.post(base(world.brand) + "labels/bulk/999999/undo/")
    assert r.status_code == 404 and r.json()["detail"] == "bulk_action: not found"


def test_accepting_a_suggestion_never_replaces_a_persons_label_unless_base_label_names_it(world, lib):
    url, a = base(world.brand) + "labels/", lib.assets[0]  # suggested: adidas
    mine = labels.save_label(world.brand, a, [lib.tags["nike"]], user=world.alice)
    r = api(world.olga).post(url, {"asset": a.pk, "accept_suggestion": True}, format="json")
    assert r.status_code == 409 and "does not replace a label" in r.json()["detail"]
    assert r.json()["current"]["id"] == mine.pk
    assert Label.objects.get(asset=a, is_current=True).pk == mine.pk  # nothing changed
    r = api(world.olga).post(url, {"asset": a.pk, "accept_suggestion": True, "base_label": mine.pk}, format="json")
    assert r.status_code == 201 and r.json()["tags"] == [lib.tags["adidas"]]
    # an unlabeled asset still takes its suggestion without base_label
    r = api(world.olga).post(url, {"asset": lib.assets[1].pk, "accept_suggestion": True}, format="json")
    assert r.status_code == 201 and r.json()["source"] == "accepted"


def test_a_bulk_action_is_undone_whole_by_its_author_and_no_one_else(world, lib):
    from labeling.models import Membership, Role

    ids = [a.pk for a in lib.assets[:3]]
    done = api(world.olga).post(base(world.brand) + "labels/bulk/",
                                {"kind": "apply_tags", "assets": ids, "tags": [lib.tags["nike"]]}, format="json")
    assert done.status_code == 201
    undo = base(world.brand) + f"labels/bulk/{done.json()['bulk_action']}/undo/"
    Membership.objects.filter(user=world.alice).update(role=Role.OPERATOR)  # a colleague, not an admin
    r = api(world.alice).post(undo)
    assert r.status_code == 403 and "author" in r.json()["detail"]
    assert api(world.otto).post(undo).status_code == 404  # another client's operator
    assert api(world.vic).post(undo).status_code == 403  # viewers write nothing
    r = api(world.olga).post(undo)
    assert r.status_code == 200 and r.json()["undone"] == 3 and sorted(r.json()["assets"]) == ids
    assert not Label.objects.filter(asset_id__in=ids, is_current=True).exists()
    assert BulkAction.objects.get(pk=done.json()["bulk_action"]).undone is not None
    again = api(world.olga).post(undo)
    assert again.status_code == 200 and again.json()["undone"] == 0
    missing = api(world.olga).post(base(world.brand) + "labels/bulk/999999/undo/")
    assert missing.status_code == 404


def test_a_manual_run_that_could_only_fail_is_refused_up_front_with_the_reason(world, lib):
    url = base(world.brand) + "runs/"
    r = api(world.alice).post(url)
    assert r.status_code == 409 and r.json()["detail"] == "not started: no labels to learn from"
    for a in lib.assets[:3]:
        labels.save_label(world.brand, a, [lib.tags["nike"]], user=world.olga)
    r = api(world.alice).post(url)
    assert r.status_code == 409 and "at least 2 tags" in r.json()["detail"]
    multi = Taxonomy.objects.create(client=world.acme, name="colours", kind=Taxonomy.Kind.MULTI)
    red, blue = (Tag.objects.create(taxonomy=multi, name=n) for n in ("red", "blue"))
    labels.save_label(multi, lib.assets[0], [red.pk, blue.pk], user=world.olga)
    labels.save_label(multi, lib.assets[1], [red.pk, blue.pk], user=world.olga)
    r = api(world.alice).post(base(multi) + "runs/")
    assert r.status_code == 409 and "same tags" in r.json()["detail"]
    assert not TrainingRun.objects.exists()  # nothing queued, so no failure backoff either
    labels.save_label(world.brand, lib.assets[3], [lib.tags["adidas"]], user=world.olga)
    r = api(world.alice).post(url)
    assert r.status_code == 202 and TrainingRun.objects.filter(pk=r.json()["id"]).exists()


def test_predict_takes_top_from_the_url_and_says_what_the_app_would_suggest(world, trained, shoe_paths):
    path = shoe_paths["test"]["nike"][0]
    files = [SimpleUploadedFile(path.name, path.read_bytes(), "image/jpeg")]
    r = api(world.olga, token=True).post(base(world.brand) + "predict/?top=1", {"images": files}, format="multipart")
    assert r.status_code == 200, r.content
    (p,) = r.json()["predictions"]
    assert len(p["tags"]) == 1 and p["suggested"] == [p["tags"][0]["tag"]]
    files[0].seek(0)
    r = api(world.olga).post(base(world.brand) + "predict/?top=x", {"images": files}, format="multipart")
    assert r.status_code == 400 and "top" in r.json()


def test_the_schema_describes_the_error_answers_and_the_token_endpoint_needs_no_token(world):
    schema = api(world.alice).get("/api/v1/schema/?format=json").json()
    labels_path = schema["paths"]["/api/v1/clients/{slug}/taxonomies/{taxonomy_id}/labels/"]
    post = labels_path["post"]["responses"]
    assert post["400"]["content"]["application/json"]["schema"]["additionalProperties"]["items"]["type"] == "string"
    for code in ("401", "403", "404", "413"):
        assert post[code]["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), code
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {"detail"}
    assert labels_path["get"]["operationId"].endswith("_list")
    token = schema["paths"]["/api/v1/auth/token/"]["post"]
    assert not token.get("security") and "401" not in token["responses"]


def test_local_matching_is_refused_for_a_multi_label_taxonomy_and_tag_names_with_line_breaks(world):
    c = api(world.alice)
    r = c.post("/api/v1/clients/acme/taxonomies/", {"name": "colours", "kind": "multi", "local_matching": True},
               format="json")
    assert r.status_code == 400 and "single-label" in r.json()["local_matching"][0]
    multi = c.post("/api/v1/clients/acme/taxonomies/", {"name": "colours", "kind": "multi"}, format="json").json()
    r = c.patch(f"/api/v1/clients/acme/taxonomies/{multi['id']}/", {"local_matching": True}, format="json")
    assert r.status_code == 400 and "local_matching" in r.json()
    assert not Taxonomy.objects.get(pk=multi["id"]).local_matching
    r = c.patch(base(world.brand), {"local_matching": True}, format="json")  # single-label: fine
    assert r.status_code == 200 and r.json()["local_matching"] is True
    r = c.post(base(world.brand) + "tags/", {"name": "red\nshoe"}, format="json")
    assert r.status_code == 400 and "control characters" in r.json()["name"][0]


def test_a_skipped_queue_item_is_passed_on_and_its_lease_is_not_renewed(world, lib):
    from labeling.models import Lease

    c, url = api(world.olga), base(world.brand) + "queue/"
    (first,) = [i["asset"] for i in c.get(url + "?limit=1").json()]
    leased_until = Lease.objects.get(asset_id=first).expires
    nxt = [i["asset"] for i in c.get(url + f"?limit=2&skipped={first}").json()]
    assert first not in nxt and len(nxt) == 2
    assert Lease.objects.get(asset_id=first).expires == leased_until  # left to lapse for colleagues
    held = [i["asset"] for i in c.get(url + f"?limit=1&exclude={nxt[0]},{nxt[1]}&skipped={first}").json()]
    assert held and not {first, *nxt} & set(held)
    assert "skipped" in c.get(url + "?skipped=a,b").json()


def test_the_up_front_check_judges_the_labels_a_run_would_train_on_not_the_held_out_ones(world, lib, monkeypatch):
    from labeling.services import training, training_data
    from ml import promotion

    # A held-out label of a tag no training label has trains instead (training_data), so what
    # can still be held out of a run is the "no" of a multi-label tag: here every "no".
    multi = Taxonomy.objects.create(client=world.acme, name="marks", kind=Taxonomy.Kind.MULTI)
    text = Tag.objects.create(taxonomy=multi, name="has text")
    blank = {a.sha256 for a in lib.assets[4:]}
    monkeypatch.setattr(training_data, "is_holdout", lambda sha: sha in blank)  # both "no" labels held out
    monkeypatch.setattr(promotion, "MIN_HOLDOUT", 2)  # ... and enough of them to compare
    for a in lib.assets[:4]:
        labels.save_label(multi, a, [text.pk], user=world.olga)
    for a in lib.assets[4:]:
        labels.save_label(multi, a, [], user=world.olga)
    r = api(world.alice).post(base(multi) + "runs/")
    assert r.status_code == 409 and "every training label has the same tags" in r.json()["detail"]
    assert training.not_ready(multi) == training.train_now(multi).error  # what a run would say


def test_no_tag_applies_is_a_multi_label_answer_that_trains_as_a_negative(world, lib):
    from labeling.services import training

    multi = Taxonomy.objects.create(client=world.acme, name="marks", kind=Taxonomy.Kind.MULTI)
    text = Tag.objects.create(taxonomy=multi, name="has text")
    url = base(multi) + "labels/"
    r = api(world.olga).post(url, {"asset": lib.assets[0].pk, "tags": []}, format="json")
    assert r.status_code == 201 and r.json()["tags"] == []
    r = api(world.olga).post(base(world.brand) + "labels/", {"asset": lib.assets[0].pk, "tags": []}, format="json")
    assert r.status_code == 400 and "tags" in r.json()  # a single-label image needs its tag
    # one tag on some images, none on the others: every image says something about "has text"
    for a in lib.assets[1:4]:
        labels.save_label(multi, a, [text.pk], user=world.olga)
    for a in lib.assets[4:]:
        labels.save_label(multi, a, [], user=world.olga)
    assert training.not_ready(multi) is None
    data = training.collect(multi, Label.objects.order_by("-id").first().pk)
    assert len(data.asset_ids) == 6 and sorted(data.y[:, 0].tolist()) == [0, 0, 0, 1, 1, 1]
    from labeling.services import dashboard

    assert {r["tag"]: r["n"] for r in dashboard.coverage(multi)["per_tag"]} == {"has text": 3, "(no tag applies)": 3}


def test_in_a_multi_label_taxonomy_a_tag_teaches_its_parents_too(world, lib):
    from labeling.services import training

    multi = Taxonomy.objects.create(client=world.acme, name="things", kind=Taxonomy.Kind.MULTI)
    vehicle = Tag.objects.create(taxonomy=multi, name="vehicle", position=0)
    car = Tag.objects.create(taxonomy=multi, name="car", parent=vehicle, position=1)
    red = Tag.objects.create(taxonomy=multi, name="red", position=2)
    labels.save_label(multi, lib.assets[0], [car.pk], user=world.olga)  # "vehicle / car" only
    labels.save_label(multi, lib.assets[1], [red.pk], user=world.olga)
    data = training.collect(multi, Label.objects.order_by("-id").first().pk)
    rows = {int(a): dict(zip(data.tag_ids, map(int, y))) for a, y in zip(data.asset_ids, data.y)}
    assert rows[lib.assets[0].pk] == {vehicle.pk: 1, car.pk: 1, red.pk: 0}
    assert rows[lib.assets[1].pk] == {vehicle.pk: 0, car.pk: 0, red.pk: 1}


def test_the_up_front_check_counts_a_tags_parents_as_training_does(world, lib):
    from labeling.services import training

    multi = Taxonomy.objects.create(client=world.acme, name="things", kind=Taxonomy.Kind.MULTI)
    vehicle = Tag.objects.create(taxonomy=multi, name="vehicle", position=0)
    car = Tag.objects.create(taxonomy=multi, name="car", parent=vehicle, position=1)
    labels.save_label(multi, lib.assets[0], [car.pk], user=world.olga)
    labels.save_label(multi, lib.assets[1], [vehicle.pk, car.pk], user=world.olga)
    # read with its parent, every label says "vehicle, car": nothing to tell apart
    assert training.not_ready(multi) == training.train_now(multi).error
    assert training.not_ready(multi).startswith(training.NEEDS_TWO_TAGS)
