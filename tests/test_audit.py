"""The random audit (services.audit): the queue's "audit" order (blind: no suggestion sent), which
labels count as audit labels, the draws, and the estimate of how often the live model is right
on the unlabeled library, with bounds for the drawn images left unanswered.

Real shoe photos go through the real import and a model from the real training service
(conftest's ``trained``: 24 photos, 2 labeled per brand, model v1 live); operators label
through the review page's JSON endpoints and the REST API as they would in production.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.urls import reverse

from labeling.models import Asset, AuditDraw, Label, Lease, Suggestion, Tag, Taxonomy
from labeling.services import audit, bulk, labels, queue, training
from ml.metrics import wilson_ci
from tests._helpers import api
from tests.conftest import BRANDS
from tests.test_review_views import as_user, make_asset, post_json, urls

pytestmark = pytest.mark.usefixtures("no_broker", "fast_passwords")


def unlabeled_scored_by_hash(taxonomy: Taxonomy) -> list[int]:
    """The audit order worked out by hand: unlabeled assets the live model scored, by sha256."""
    scored = Suggestion.objects.filter(model_version_id=taxonomy.live_model_id, is_labeled=False)
    return [a.pk for a in sorted((s.asset for s in scored.select_related("asset")), key=lambda a: a.sha256)]


def audit_queue(c, world, limit: int = 5) -> list[dict]:
    r = c.get(urls(world, "queue_json"), {"order": "audit", "limit": limit})
    assert r.status_code == 200, r.content
    return r.json()["items"]


def hidden(taxonomy: Taxonomy, item: dict) -> list[int]:
    """The live suggestion the blind audit item did not carry, as the server compares with it."""
    s = labels.live_suggestions(taxonomy, [item["asset"]])[item["asset"]]
    return sorted(labels.suggested_tag_ids(taxonomy, s))


def label_as(c, world, item: dict, tag_ids: list[int], audit_flag: bool = True) -> dict:
    r = post_json(c, urls(world, "label_json"),
                  {"asset": item["asset"], "tags": tag_ids, "base_label": None, "audit": audit_flag})
    assert r.status_code == 200, r.content
    return r.json()


# --- the order ---------------------------------------------------------------------------


def test_the_audit_order_serves_only_unlabeled_assets_the_live_model_scored_by_content_hash(
        world, trained, shoe_paths):
    late = make_asset(world.acme, shoe_paths["test"]["nike"][0])  # imported after v1: not scored
    expected = unlabeled_scored_by_hash(world.brand)
    assert len(expected) == 18 and late.pk not in expected and not set(trained.seeded) & set(expected)

    items = audit_queue(as_user(world.olga), world, limit=50)
    assert [i["asset"] for i in items] == expected and all(i["audit"] for i in items)
    # every one served is recorded as drawn for the live version, by its first drawer
    assert sorted(AuditDraw.objects.filter(taxonomy=world.brand, model_version=world.brand.live_model,
                                           user=world.olga).values_list("asset_id", flat=True)) == sorted(expected)
    # the other orders go on to unscored assets; the audit samples what the model answered
    uncertain = queue.review_batch(world.brand, order="uncertain", limit=50)
    assert late.pk in {i["asset"] for i in uncertain} and not any(i["audit"] for i in uncertain)


def test_two_operators_in_the_audit_order_get_the_next_assets_by_hash_never_the_same(world, trained):
    expected = unlabeled_scored_by_hash(world.brand)
    olga = [i["asset"] for i in audit_queue(as_user(world.olga), world, limit=5)]
    alice = [i["asset"] for i in audit_queue(as_user(world.alice), world, limit=5)]
    assert olga == expected[:5] and alice == expected[5:10]
    assert set(Lease.objects.filter(user=world.olga, audit=True).values_list("asset_id", flat=True)) == set(olga)
    # a viewer looks at the sample from its start, leasing nothing: nothing is taken from the operators
    vic = [i["asset"] for i in audit_queue(as_user(world.vic), world, limit=5)]
    assert vic == expected[:5] and not Lease.objects.filter(user=world.vic).exists()


def test_without_a_live_model_the_audit_has_nothing_to_serve_and_the_page_says_why(world, shoe_paths):
    for p in shoe_paths["train"]["adidas"][:3]:
        make_asset(world.acme, p)
    c = as_user(world.olga)
    r = c.get(urls(world, "queue_json"), {"order": "audit"}).json()
    assert r["items"] == [] and r["status"]["live_version"] is None
    assert len(c.get(urls(world, "queue_json"), {"order": "uncertain"}).json()["items"]) == 3
    page = c.get(urls(world, "review")).content.decode()
    assert 'data-order="audit"' in page and "Random sample (audit)" in page and 'id="audit-note"' in page
    board = c.get(urls(world, "dashboard")).content.decode()
    assert "No live model yet: train a model first" in board


# --- which labels are audit labels -------------------------------------------------------


def test_a_label_saved_in_the_audit_order_is_marked_and_one_not_served_by_it_is_not(world, trained):
    c = as_user(world.olga)
    served = audit_queue(c, world, limit=2)
    saved = label_as(c, world, served[0], hidden(world.brand, served[0]))
    assert saved["audit"] is True and saved["source"] == "accepted"
    assert Label.objects.get(pk=saved["label"]).audit

    # The client says "audit" for an image it picked itself (here: the last one by hash, never
    # served to anyone): refused as an audit label, saved as an ordinary one.
    picked = {"asset": unlabeled_scored_by_hash(world.brand)[-1]}
    saved = label_as(c, world, picked, [trained.tags["nike"]])
    assert saved["audit"] is False and not Label.objects.get(pk=saved["label"]).audit

    # Served in the uncertain order, labeled with audit=true: not an audit label either.
    other = queue.review_batch(world.brand, order="uncertain", limit=1, user=world.olga, exclude=[served[1]["asset"]])
    saved = label_as(c, world, other[0], other[0]["suggested"])
    assert saved["audit"] is False
    # Served in the audit order but saved without the flag: an ordinary label.
    saved = label_as(c, world, served[1], hidden(world.brand, served[1]), audit_flag=False)
    assert saved["audit"] is False
    assert Label.objects.filter(taxonomy=world.brand, audit=True).count() == 1


def test_another_operators_audit_lease_or_another_taxonomy_does_not_make_an_audit_label(world, trained):
    [alices] = audit_queue(as_user(world.alice), world, limit=1)
    look = Taxonomy.objects.create(client=world.acme, name="look")
    Tag.objects.create(taxonomy=look, name="shoe")
    olga = as_user(world.olga)
    assert label_as(olga, world, alices, hidden(world.brand, alices))["audit"] is False  # alice's lease, not olga's

    [mine] = audit_queue(olga, world, limit=1)
    r = post_json(olga, reverse("label_json", args=["acme", look.pk]),
                  {"asset": mine["asset"], "tags": [look.tags.get().pk], "audit": True})
    assert r.status_code == 200 and r.json()["audit"] is False  # served for "brand", labeled in "look"


def test_an_image_labeled_by_a_colleague_meanwhile_is_not_an_audit_label(world, trained):
    olga = as_user(world.olga)
    [item] = audit_queue(olga, world, limit=1)
    first = labels.save_label(world.brand, Asset.objects.get(pk=item["asset"]), [trained.tags["adidas"]], world.alice)
    r = post_json(olga, urls(world, "label_json"),
                  {"asset": item["asset"], "tags": hidden(world.brand, item), "base_label": first.pk, "audit": True})
    assert r.status_code == 200 and r.json()["audit"] is False  # no longer a sample of the unlabeled


def test_an_undone_audit_label_can_be_given_again_as_an_audit_label(world, trained):
    olga = as_user(world.olga)
    [item] = audit_queue(olga, world, limit=1)
    label_as(olga, world, item, hidden(world.brand, item))
    Lease.objects.filter(user=world.olga).delete()  # lapsed and purged meanwhile
    undone = post_json(olga, urls(world, "undo_json"), {}).json()
    assert undone["undone"] == item["asset"] and undone["item"]["audit"] is True
    assert undone["item"] | {"label": None} == item  # blind again: no suggestion, probabilities nor uncertainty
    assert audit.by_version(world.brand)[1]["audited"] == 0  # an undone answer is gone
    again = label_as(olga, world, undone["item"], [trained.tags["converse"]])
    assert again["audit"] is True


# --- the estimate ------------------------------------------------------------------------


def audit_truthfully(c, world, truth_of, tag_ids_of, n: int) -> int:
    """Label ``n`` images of the audit order with their true tags; returns the hand count of
    those whose suggested tags were exactly the true ones."""
    right = 0
    items = audit_queue(c, world, limit=n)
    assert len(items) == n
    for item in items:
        true_ids = tag_ids_of(truth_of(item["asset"]))
        right += hidden(world.brand, item) == sorted(true_ids)
        saved = label_as(c, world, item, true_ids)
        assert saved["audit"] is True
    return right


def test_the_single_label_estimate_is_the_hand_counted_share_of_answers_equal_to_the_hidden_suggestion(
        world, trained):
    olga = as_user(world.olga)
    right = audit_truthfully(olga, world, trained.truth.get, lambda brand: [trained.tags[brand]], 12)
    # a label from the uncertain order does not count
    [plain] = queue.review_batch(world.brand, order="uncertain", limit=1, user=world.olga)
    label_as(olga, world, plain, plain["suggested"])

    est = audit.estimate(world.brand)
    assert 0 < right < 12, "precondition: the audit saw suggestions kept and corrected"
    assert est["live_version"] == 1 and est["audited"] == 12 and est["needed"] == 0
    assert est["live"]["right"] == right and est["live"]["rate"] == round(right / 12, 4)
    assert est["live"]["ci95"] == [round(x, 4) for x in wilson_ci(right, 12)]
    # everything drawn was answered: the bounds are the interval
    assert est["live"]["drawn"] == 12 and est["live"]["unanswered"] == 0 and est["live"]["bounds95"] == est["live"]["ci95"]

    board = olga.get(urls(world, "dashboard")).content.decode()
    lo, hi = (round(100 * x) for x in wilson_ci(right, 12))
    assert (f"Live model on a random sample of unlabeled images: <strong>{round(100 * right / 12)}% "
            f"[{lo}, {hi}] right</strong> on 12 audited") in board
    assert "hardest picks" in board and 'id="audit-unanswered"' not in board

    # the models endpoint carries it beside the held-out scores, per version
    [v1] = api(world.vic).get(f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/models/").json()
    assert v1["audit"] == {"drawn": 12, "audited": 12, "unanswered": 0, "right": right, "rate": round(right / 12, 4),
                           "ci95": est["live"]["ci95"], "bounds95": est["live"]["ci95"]}
    detail = api(world.vic).get(f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/models/{v1['id']}/").json()
    assert detail["audit"] == v1["audit"]


def test_each_version_keeps_its_own_audit_and_a_new_live_one_starts_from_zero(world, trained):
    olga = as_user(world.olga)
    right = audit_truthfully(olga, world, trained.truth.get, lambda brand: [trained.tags[brand]], 10)
    run = training.train_now(world.brand)  # v2 learns from the audit labels too
    assert run.state == "promoted", run.error
    world.brand.refresh_from_db()
    est = audit.estimate(world.brand)
    assert est["live_version"] == 2 and est["live"] is None and est["needed"] == audit.MIN_AUDITED
    assert [(v["version"], v["audited"], v["right"]) for v in est["by_version"]] == [(1, 10, right)]
    v2, v1 = api(world.vic).get(f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/models/").json()
    assert v2["audit"] is None and v1["audit"]["audited"] == 10
    assert len(audit_queue(olga, world, limit=50)) == 24 - 6 - 10  # v2 scored the rest


def test_with_few_audited_the_dashboard_says_how_many_more_and_links_to_the_audit_queue(world, trained):
    olga = as_user(world.olga)
    right = audit_truthfully(olga, world, trained.truth.get, lambda brand: [trained.tags[brand]], 3)
    est = audit.estimate(world.brand)
    assert est["audited"] == 3 and est["needed"] == audit.MIN_AUDITED - 3 and est["live"]["right"] == right
    board = olga.get(urls(world, "dashboard")).content.decode()
    assert f"3 images audited for v1 ({right} right): audit {audit.MIN_AUDITED - 3} more" in board
    assert f'href="{urls(world, "review")}?order=audit"' in board


@pytest.fixture
def look(world, shoe_library) -> SimpleNamespace:
    """A multi-label "look" taxonomy over the 24 shoes: its brand, and "american" for converse
    and nike; 3 photos per brand labeled and a real model v1 trained on them."""
    assets, truth = shoe_library
    tax = Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)
    tags = {name: Tag.objects.create(taxonomy=tax, name=name, position=i).pk
            for i, name in enumerate((*BRANDS, "american"))}

    def true_tags(brand: str) -> list[int]:
        return sorted([tags[brand]] + ([tags["american"]] if brand in ("converse", "nike") else []))

    for brand in BRANDS:
        for asset_id in [a for a, b in sorted(truth.items()) if b == brand][:3]:
            labels.save_label(tax, assets[asset_id], true_tags(brand), source=Label.Source.IMPORTED)
    run = training.train_now(tax)
    assert run.state == "promoted", run.error
    tax.refresh_from_db()
    world.brand = tax  # urls() and the views address world.brand
    return SimpleNamespace(taxonomy=tax, truth=truth, true_tags=true_tags)


def test_the_multilabel_estimate_counts_an_image_right_only_when_every_suggested_tag_is(world, look):
    olga = as_user(world.olga)
    right = audit_truthfully(olga, world, look.truth.get, look.true_tags, 10)
    est = audit.estimate(look.taxonomy)
    assert 0 < right < 10, "precondition: the audit saw tag sets kept and corrected"
    assert est["live"]["audited"] == 10 and est["live"]["right"] == right
    assert est["live"]["ci95"] == [round(x, 4) for x in wilson_ci(right, 10)]
    board = olga.get(urls(world, "dashboard")).content.decode()
    assert f"{round(100 * right / 10)}% [" in board and "exactly the suggested tags" in board
    assert "hardest picks" in board


# --- the REST API and other clients ------------------------------------------------------


def test_the_api_queue_and_labels_mark_audit_labels_by_the_same_rule(world, trained):
    base = f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/"
    olga = api(world.olga)
    items = olga.get(base + "queue/", {"order": "audit", "limit": 2}).json()
    assert [i["asset"] for i in items] == unlabeled_scored_by_hash(world.brand)[:2] and items[0]["audit"]
    assert all(i["suggested"] == [] and i["tags"] == [] and i["uncertainty"] is None for i in items)  # blind
    # accepting the suggestion unseen is no answer: refused, nothing saved
    r = olga.post(base + "labels/", {"asset": items[0]["asset"], "accept_suggestion": True, "audit": True},
                  format="json")
    assert r.status_code == 400 and "audit" in r.json() and not Label.objects.filter(asset_id=items[0]["asset"]).exists()
    r = olga.post(base + "labels/", {"asset": items[0]["asset"], "tags": hidden(world.brand, items[0]), "audit": True},
                  format="json")
    assert r.status_code == 201 and r.json()["audit"] is True and r.json()["source"] == "accepted"
    hand_picked = unlabeled_scored_by_hash(world.brand)[-1]
    r = olga.post(base + "labels/", {"asset": hand_picked, "tags": [trained.tags["nike"]], "audit": True}, format="json")
    assert r.status_code == 201 and r.json()["audit"] is False
    assert olga.post(base + "labels/", {"asset": items[1]["asset"], "tags": [trained.tags["nike"]], "audit": "maybe"},
                     format="json").status_code == 400


def test_another_client_sees_nothing_of_the_audit(world, trained):
    olga = as_user(world.olga)
    [item] = audit_queue(olga, world, limit=1)
    label_as(olga, world, item, hidden(world.brand, item))
    otto = as_user(world.otto)
    assert otto.get(urls(world, "queue_json"), {"order": "audit"}).status_code == 404
    assert otto.get(urls(world, "dashboard")).status_code == 404
    assert post_json(otto, urls(world, "label_json"),
                     {"asset": item["asset"], "tags": hidden(world.brand, item), "audit": True}).status_code == 404
    base = f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/"
    assert api(world.otto).get(base + "models/").status_code == 404
    assert api(world.otto).get(base + "queue/", {"order": "audit"}).status_code == 404
    # his own taxonomy has no model: its audit is empty, and never serves acme's images
    own = reverse("queue_json", args=["globex", world.other_tax.pk])
    assert otto.get(own, {"order": "audit"}).json()["items"] == []
    assert audit.estimate(world.other_tax)["by_version"] == []
    # an acme asset named in his own taxonomy is another client's: not found
    r = post_json(otto, reverse("label_json", args=["globex", world.other_tax.pk]),
                  {"asset": item["asset"], "tags": [world.other_tax.tags.get().pk], "audit": True})
    assert r.status_code == 404


# --- blind answers, non-response, re-saves and races -------------------------------------


def test_an_audit_item_is_blind_and_the_server_judges_the_answer_against_the_hidden_suggestion(world, trained):
    olga = as_user(world.olga)
    first, second = audit_queue(olga, world, limit=2)
    assert all(i["suggested"] == [] and i["tags"] == [] and i["uncertainty"] is None for i in (first, second))
    assert 'id="blind-note"' in olga.get(urls(world, "review")).content.decode()
    same = label_as(olga, world, first, hidden(world.brand, first))
    [other] = [t for t in trained.tags.values() if [t] != hidden(world.brand, second)][:1]
    differs = label_as(olga, world, second, [other])
    assert (same["source"], same["audit"], differs["source"], differs["audit"]) == ("accepted", True, "corrected", True)
    assert set(Label.objects.filter(audit=True).values_list("model_version", flat=True)) == {world.brand.live_model_id}
    v1 = audit.by_version(world.brand)[1]
    assert (v1["drawn"], v1["audited"], v1["right"], v1["rate"]) == (2, 2, 1, 0.5)


def answer_only_the_easy_ones(world, trained, items: list[dict], post) -> int:
    """Answer (truthfully) only the items whose hidden suggestion is right; returns how many."""
    easy = [i for i in items if hidden(world.brand, i) == [trained.tags[trained.truth[i["asset"]]]]]
    for i in easy:
        assert post(i, [trained.tags[trained.truth[i["asset"]]]])["audit"] is True
    return len(easy)


def assert_bounds_hold_the_honest_rate(v: dict, drawn: int, easy: int) -> None:
    """``easy`` of ``drawn`` answered, all right; the rest skipped, all wrong (honest rate easy/drawn)."""
    assert 10 <= easy < drawn, "precondition: hard ones skipped, enough answered for a headline"
    assert (v["drawn"], v["audited"], v["unanswered"], v["rate"]) == (drawn, easy, drawn - easy, 1.0)
    lo, hi = v["bounds95"]
    assert lo == round(wilson_ci(easy, drawn)[0], 4) and hi == 1.0 and lo < easy / drawn < v["ci95"][0]


def test_skipping_the_hard_ones_leaves_them_unanswered_and_the_bounds_hold_the_honest_rate(world, trained):
    olga = as_user(world.olga)
    items = audit_queue(olga, world, limit=18)  # served: all drawn, whatever is answered
    easy = answer_only_the_easy_ones(world, trained, items, lambda i, tags: label_as(olga, world, i, tags))
    est = audit.estimate(world.brand)
    assert_bounds_hold_the_honest_rate(est["live"], 18, easy)
    board = olga.get(urls(world, "dashboard")).content.decode()
    lo, hi = (round(100 * x) for x in est["live"]["bounds95"])
    assert f"on {easy} audited; <span id=\"audit-unanswered\">{18 - easy} drawn images unanswered: {lo}–{hi}% " \
           "whatever they are" in board


def test_walking_the_audit_order_through_the_api_to_pick_the_easy_ones_shows_as_unanswered(world, trained):
    base = f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/"
    olga = api(world.olga)
    seen, easy = [], 0
    while items := olga.get(base + "queue/", {"order": "audit", "limit": 5, "exclude": ",".join(map(str, seen))}).json():
        seen += [i["asset"] for i in items]
        easy += answer_only_the_easy_ones(world, trained, items, lambda i, tags: olga.post(
            base + "labels/", {"asset": i["asset"], "tags": tags, "audit": True}, format="json").json())
    [v1] = olga.get(base + "models/").json()
    assert len(seen) == 18
    assert_bounds_hold_the_honest_rate(v1["audit"], 18, easy)


def test_an_audit_answer_survives_later_re_saves_of_its_image(world, trained):
    olga = as_user(world.olga)
    truth = {i["asset"]: [trained.tags[trained.truth[i["asset"]]]] for i in audit_queue(olga, world, limit=18)}
    answers = {a: label_as(olga, world, {"asset": a}, tags)["source"] for a, tags in truth.items()}
    before = audit.by_version(world.brand)[1]
    corrected = [a for a, source in answers.items() if source == "corrected"]
    accepted = [a for a, source in answers.items() if source == "accepted"]
    assert len(corrected) >= 2 and accepted, "precondition"
    # second look's "keep" re-saves the same tags; a colleague's fix; a bulk relabel
    assert post_json(olga, reverse("keep_json", args=["acme", world.brand.pk]), {"asset": corrected[0]}).status_code == 200
    labels.save_label(world.brand, Asset.objects.get(pk=corrected[1]), [trained.tags["nike"]], world.alice)
    bulk.apply_each(world.brand, [accepted[0]], world.alice, tag_ids=[trained.tags["adidas"]])
    assert Label.objects.filter(taxonomy=world.brand, audit=True, is_current=False).count() == 3
    assert audit.by_version(world.brand)[1] == before


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_overlapping_fetch_in_another_order_never_takes_the_audit_lease_away(world, trained, monkeypatch, when):
    """o pressed twice: the same user's "confident" fetch runs just before, or just after, the
    audit fetch inserts its lease (the interleaving forced here)."""
    manager, armed = type(Lease.objects), {"on": True}
    original = manager.bulk_create

    def interleaved(self, objs, *args, **kwargs):
        other_fetch = self.model is Lease and armed.pop("on", False)
        if other_fetch and when == "before":
            queue.review_batch(world.brand, order="confident", limit=50, user=world.olga)
        created = original(self, objs, *args, **kwargs)
        if other_fetch and when == "after":
            queue.review_batch(world.brand, order="confident", limit=50, user=world.olga)
        return created

    monkeypatch.setattr(manager, "bulk_create", interleaved)
    [item] = queue.review_batch(world.brand, order="audit", limit=1, user=world.olga)
    assert not armed and item["audit"] and Lease.objects.get(asset_id=item["asset"]).audit
    label = labels.save_label(world.brand, Asset.objects.get(pk=item["asset"]), hidden(world.brand, item), world.olga,
                              base_label=None, audit=True)
    assert label.audit and AuditDraw.objects.filter(asset_id=item["asset"], user=world.olga).exists()
