"""Operators working side by side: a bulk action does not hold up the others' labels, the review
page keeps what it holds and meets a colleague's label with a 409 instead of overwriting it,
undo touches only a label that is still the user's, and the retrain counter counts changes of
the training data (a confirmation is none, an undo is one).

The lock test needs PostgreSQL (DATABASE_URL=postgres://...): SQLite serialises all writers.
"""
from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from labeling.models import Asset, Label, LabelEvent, Lease, Suggestion
from labeling.services import bulk, labels
from tests._helpers import png_bytes, wait_for
from tests.conftest import login

# Playwright's sync API runs an event loop in this thread (see test_review_browser.py).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


def _url(world, name: str) -> str:
    return f"/c/acme/t/{world.brand.pk}/{name}"


def _post(client, url: str, body: dict | None = None):
    return client.post(url, body or {}, content_type="application/json")


def _counter(world) -> int:
    world.brand.refresh_from_db(fields=["labels_since_train"])
    return world.brand.labels_since_train


def _open(trained) -> list[int]:
    return sorted(a for a in trained.assets if a not in trained.seeded)


@pytest.fixture
def no_retrain_check(monkeypatch):
    # No broker in these tests; the check itself is covered by test_bulk and test_training.
    monkeypatch.setattr(labels, "request_retrain_check", lambda taxonomy_id: False)


# --- bulk actions ---------------------------------------------------------------------------


@pytest.fixture
def postgres(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("lock test needs PostgreSQL (set DATABASE_URL=postgres://...); SQLite serialises writers")


def _many_assets(world, n: int) -> list[int]:
    stored = default_storage.save("assets/shared/one.png", ContentFile(png_bytes(1)))
    Asset.objects.bulk_create([
        Asset(client=world.acme, original_name=f"a{i}.png", sha256=f"{i:064x}", byte_size=1, width=24, height=24,
              format="PNG", file=stored)
        for i in range(n)
    ])
    return list(Asset.objects.filter(client=world.acme).order_by("id").values_list("id", flat=True))


def test_a_label_saved_while_a_bulk_action_is_still_writing_does_not_wait_for_it(
    postgres, world, no_retrain_check, monkeypatch
):
    monkeypatch.setattr(bulk, "after_commit", lambda taxonomy, asset_ids: None)  # no clustering here
    ids = _many_assets(world, 602)  # more than one labels.CHUNK
    nike, adidas = world.brand.tags.get(name="nike").pk, world.brand.tags.get(name="adidas").pk
    held = ids[599]  # labeled before, so its label row can be locked; the bulk reaches it last
    labels.save_label(world.brand, Asset.objects.get(pk=held), [adidas], world.alice)
    selection = [a for a in ids[:600] if a != held] + [held]
    locked, release, errors = threading.Event(), threading.Event(), []

    def hold_one_label() -> None:  # a colleague's transaction that happens to hold one row
        try:
            with transaction.atomic():
                Label.objects.select_for_update().get(asset_id=held, is_current=True)
                locked.set()
                release.wait(60)
        finally:
            connection.close()  # this thread's own connection

    def bulk_action() -> None:
        try:
            bulk.apply(world.brand, selection, world.olga, tag_ids=[nike])
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=t) for t in (hold_one_label, bulk_action)]
    try:
        threads[0].start()
        assert locked.wait(30)
        threads[1].start()
        # The bulk action is under way and now waits for the held row.
        wait_for(lambda: _waiting_for_a_lock() > 0, timeout=60)
        with transaction.atomic():
            # Another operator's label must not queue behind the bulk action's transaction.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '3s'")
            labels.save_label(world.brand, Asset.objects.get(pk=ids[-1]), [nike], world.alice)
    except OperationalError as exc:
        pytest.fail(f"the single label waited for the bulk action's lock: {exc}")
    finally:
        release.set()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert Label.objects.filter(taxonomy=world.brand, is_current=True, asset_id__in=selection).count() == 600
    assert Label.objects.filter(batch__isnull=False, tags=nike).count() == 600
    assert LabelEvent.objects.filter(user=world.olga, action="set").count() == 600
    assert _counter(world) == 1 + 600 + 1  # alice's first label, the bulk action, alice's label


def test_two_bulk_actions_over_the_same_new_assets_at_once_both_land_and_the_last_one_is_current(
    postgres, world, no_retrain_check, monkeypatch
):
    monkeypatch.setattr(bulk, "after_commit", lambda taxonomy, asset_ids: None)
    ids = _many_assets(world, 300)
    tags = [world.brand.tags.get(name="nike").pk, world.brand.tags.get(name="adidas").pk]
    barrier, errors = threading.Barrier(2), []

    def bulk_action(user, tag: int) -> None:
        try:
            barrier.wait()  # both insert the first labels of the same assets at the same moment
            bulk.apply(world.brand, list(reversed(ids)) if tag == tags[1] else ids, user, tag_ids=[tag])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=bulk_action, args=a) for a in ((world.olga, tags[0]), (world.alice, tags[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert Label.objects.filter(asset_id__in=ids).count() == 600  # the first one of each kept as history
    current = Label.objects.filter(asset_id__in=ids, is_current=True)
    assert current.count() == 300 and len({b for b in current.values_list("batch", flat=True)}) == 1
    assert _counter(world) == 600


def _waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


def test_a_bulk_action_takes_the_same_few_queries_for_six_or_twelve_assets(world, trained, no_retrain_check):
    open_ids, nike = _open(trained), trained.tags["nike"]
    assert len(open_ids) >= 18
    with CaptureQueriesContext(connection) as few:
        bulk.apply(world.brand, open_ids[:6], world.olga, tag_ids=[nike])
    with CaptureQueriesContext(connection) as more:
        bulk.apply(world.brand, open_ids[6:18], world.olga, tag_ids=[nike])
    assert len(more.captured_queries) == len(few.captured_queries) < 25, [q["sql"] for q in more.captured_queries]
    # Still one Label, tag row and SET event per asset, and the asset leaves the queue.
    assert Label.objects.filter(asset_id__in=open_ids[:18], is_current=True, tags=nike).count() == 18
    events = LabelEvent.objects.filter(asset_id__in=open_ids[:18], action="set")
    assert events.filter(before__isnull=True, after=[nike]).count() == events.count() == 18
    assert not Suggestion.objects.filter(asset_id__in=open_ids[:18], is_labeled=False).exists()


def test_a_bulk_action_over_labeled_assets_keeps_their_history_and_counts_only_real_changes(
    world, trained, no_retrain_check
):
    nike, adidas = trained.tags["nike"], trained.tags["adidas"]
    a, b, c = _open(trained)[:3]
    first = labels.save_label(world.brand, trained.assets[a], [nike], world.alice)
    labels.save_label(world.brand, trained.assets[b], [adidas], world.alice)
    counter = _counter(world)
    action = bulk.apply(world.brand, [a, b, c], world.olga, tag_ids=[nike])
    assert action.n_labels == 3
    assert Label.objects.get(pk=first.pk).is_current is False  # kept as history
    events = {e.asset_id: (e.before, e.after) for e in LabelEvent.objects.filter(label__batch=action)}
    assert events == {a: ([nike], [nike]), b: ([adidas], [nike]), c: (None, [nike])}
    assert _counter(world) == counter + 2  # a already had exactly these tags: a confirmation


def test_labeling_the_same_asset_twice_in_one_bulk_save_keeps_both_in_order(world, trained, no_retrain_check):
    asset = trained.assets[_open(trained)[0]]
    n = labels.save_labels(world.brand, [(asset, [trained.tags["nike"]]), (asset, [trained.tags["adidas"]])], world.olga)
    assert n == 2
    older, newer = Label.objects.filter(asset=asset).order_by("id")
    assert (older.is_current, newer.is_current) == (False, True)
    assert labels.tag_ids_of(newer) == [trained.tags["adidas"]]


# --- the counter --------------------------------------------------------------------------


def test_posting_the_current_tags_again_is_recorded_but_not_counted_toward_a_retrain(
    world, trained, client, no_retrain_check
):
    asset, nike = _open(trained)[0], trained.tags["nike"]
    login(client, world.olga)
    assert _post(client, _url(world, "labels.json"), {"asset": asset, "tags": [nike]}).status_code == 200
    counter = _counter(world)
    r = _post(client, _url(world, "labels.json"), {"asset": asset, "tags": [nike]})
    assert r.status_code == 200 and r.json()["status"]["labels_since_train"] == counter
    assert _counter(world) == counter
    confirmation = LabelEvent.objects.filter(asset_id=asset, action="set").first()  # newest first
    assert (confirmation.before, confirmation.after, confirmation.label_id) == ([nike], [nike], r.json()["label"])


def test_undoing_a_label_the_model_already_learned_counts_as_a_change(world, trained, no_retrain_check):
    from labeling.services import training

    seeded = trained.assets[trained.seeded[0]]
    labels.save_label(world.brand, seeded, [trained.tags["converse"]], world.alice)  # a correction
    assert training.train_now(world.brand).state in ("promoted", "rejected")  # it is learned
    assert _counter(world) == 0
    labels.save_label(world.brand, trained.assets[_open(trained)[0]], [trained.tags["nike"]], world.olga)
    labels.undo_last(world.brand, world.alice)  # the learned correction is gone again
    assert _counter(world) == 2  # one new label, one removed: the training data changed twice


# --- the review page: leases and conflicts ------------------------------------------------


def _age_leases(seconds: int) -> None:
    """As if ``seconds`` had passed (the same as moving the clock forward)."""
    Lease.objects.update(expires=F("expires") - timedelta(seconds=seconds))


def test_images_the_review_page_still_holds_keep_their_lease_while_it_refills(world, trained, client):
    from django.test import Client as HttpClient

    olga, alice = client, HttpClient()
    login(olga, world.olga)
    login(alice, world.alice)
    held = [i["asset"] for i in olga.get(_url(world, "queue.json"), {"limit": 5}).json()["items"]]
    assert len(held) == 5
    _age_leases(60)
    # olga skipped the first; the page refills one, naming the 4 it holds and the one skipped
    olga.get(_url(world, "queue.json"), {"limit": 1, "exclude": ",".join(map(str, held[1:])),
                                         "skipped": str(held[0])})
    _age_leases(61)  # 121 s after the first fetch
    theirs = [i["asset"] for i in alice.get(_url(world, "queue.json"), {"limit": 10}).json()["items"]]
    assert not set(held[1:]) & set(theirs)
    assert held[0] in theirs  # what olga skipped is left to lapse, so a colleague gets it
    assert Lease.objects.filter(asset_id__in=held[1:], user=world.olga, expires__gt=timezone.now()).count() == 4


def test_two_operators_labeling_one_image_from_the_review_page_get_a_409_not_an_overwrite(
    world, trained, client, no_retrain_check
):
    from django.test import Client as HttpClient

    olga, alice = client, HttpClient()
    login(olga, world.olga)
    login(alice, world.alice)
    item = olga.get(_url(world, "queue.json"), {"limit": 1}).json()["items"][0]
    assert item["label"] is None  # what the page sends back as base_label
    first = _post(alice, _url(world, "labels.json"),
                  {"asset": item["asset"], "tags": [trained.tags["adidas"]], "base_label": None})
    assert first.status_code == 200
    r = _post(olga, _url(world, "labels.json"), {"asset": item["asset"], "tags": [trained.tags["nike"]],
                                               "base_label": item["label"]})
    assert r.status_code == 409, r.content
    assert r.json()["current"] == {"id": first.json()["label"], "tags": [trained.tags["adidas"]]}
    assert list(Label.objects.filter(asset_id=item["asset"]).values_list("pk", flat=True)) == [first.json()["label"]]
    # Saving on top of the label one has seen is fine.
    ok = _post(olga, _url(world, "labels.json"), {"asset": item["asset"], "tags": [trained.tags["nike"]],
                                                "base_label": first.json()["label"]})
    assert ok.status_code == 200
    assert _post(olga, _url(world, "labels.json"), {"asset": item["asset"], "tags": [trained.tags["nike"]],
                                                   "base_label": "x"}).json()["field"] == "base_label"


# --- undo ---------------------------------------------------------------------------------


def test_undo_is_refused_when_a_colleague_changed_the_users_last_label(world, trained, client, no_retrain_check):
    x, y = _open(trained)[:2]
    nike, adidas = trained.tags["nike"], trained.tags["adidas"]
    labels.save_label(world.brand, trained.assets[x], [nike], world.olga)
    labels.save_label(world.brand, trained.assets[y], [nike], world.olga)
    corrected = labels.save_label(world.brand, trained.assets[y], [adidas], world.alice)
    counter = _counter(world)
    login(client, world.olga)
    r = _post(client, _url(world, "undo.json"))
    assert r.status_code == 409 and "changed by someone else" in r.json()["error"], r.content
    assert trained.assets[y].original_name in r.json()["error"]
    # nothing undone: not olga's older label of x, not alice's correction of y
    assert Label.objects.get(asset_id=x, is_current=True).user == world.olga
    assert Label.objects.get(asset_id=y, is_current=True) == corrected
    assert _counter(world) == counter and not LabelEvent.objects.filter(action="undo").exists()
    # told once, the next undo (the page sends the refused label back) goes on to olga's older label
    again = _post(client, _url(world, "undo.json"), {"before": r.json()["refused"]})
    assert again.status_code == 200 and again.json()["undone"] == x
    assert not Label.objects.filter(asset_id=x, is_current=True).exists()
    assert Label.objects.get(asset_id=y, is_current=True) == corrected  # alice's stays


def test_repeated_undos_walk_back_through_the_users_own_labels(world, trained, no_retrain_check):
    x, y = _open(trained)[:2]
    labels.save_label(world.brand, trained.assets[x], [trained.tags["nike"]], world.olga)
    labels.save_label(world.brand, trained.assets[y], [trained.tags["nike"]], world.olga)
    labels.save_label(world.brand, trained.assets[y], [trained.tags["adidas"]], world.olga)
    assert [labels.undo_last(world.brand, world.olga).asset_id for _ in range(3)] == [y, y, x]
    assert labels.undo_last(world.brand, world.olga) is None
    assert not Label.objects.filter(asset_id__in=[x, y]).exists()


# --- in a real browser --------------------------------------------------------------------


@pytest.mark.browser
def test_the_review_page_skips_an_image_a_colleague_labeled_and_says_why_an_undo_is_refused(
    reviewable, live_server, browser
):
    from tests.test_review_browser import current_label, showing

    world = reviewable
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "olga-pass-123")
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/c/acme/t/{world.brand.pk}/review/")
    first, _ = showing(page)
    adidas = world.brand.tags.get(name="adidas").pk
    theirs = labels.save_label(world.brand, Asset.objects.get(pk=first), [adidas], world.alice)

    page.keyboard.press("1")  # olga labels what her page still shows
    page.wait_for_selector("#toast:has-text('labeled by someone else meanwhile')")
    assert current_label(first) == theirs  # not overwritten
    second, _ = showing(page)
    assert second != first  # the page moved on

    page.keyboard.press("1")
    mine = wait_for(lambda: current_label(second))
    labels.save_label(world.brand, Asset.objects.get(pk=second), [adidas], world.alice, base_label=mine.pk)
    page.keyboard.press("u")
    page.wait_for_selector("#toast:has-text('changed by someone else')")
    assert current_label(second).user_id == world.alice.pk
    assert current_label(first) == theirs
    page.close()
    assert errors == [], errors


def test_a_taxonomy_deleted_while_its_first_label_is_being_saved_is_refused_and_the_label_kept(
    postgres, world, no_retrain_check
):
    from tests._helpers import api

    asset = Asset.objects.get(pk=_many_assets(world, 1)[0])
    nike = world.brand.tags.get(name="nike").pk
    saving, release, errors, answer = threading.Event(), threading.Event(), [], {}

    def save_a_label() -> None:  # an import or a colleague, its transaction not yet committed
        try:
            with transaction.atomic():
                labels.save_label(world.brand, asset, [nike], world.olga)
                saving.set()
                release.wait(60)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def delete_the_taxonomy() -> None:
        try:
            answer["delete"] = api(world.alice).delete(f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=save_a_label), threading.Thread(target=delete_the_taxonomy)]
    try:
        threads[0].start()
        assert saving.wait(30)
        threads[1].start()
        wait_for(lambda: _waiting_for_a_lock() > 0, timeout=30)  # the delete waits for the label's commit
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert answer["delete"].status_code == 409, answer["delete"].content
    assert Label.objects.filter(taxonomy=world.brand, asset=asset, is_current=True).exists()
