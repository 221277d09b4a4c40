"""The review page keeps the images it holds while it is open: its status poll names them
(status.json?hold=...) and the server renews the caller's own leases on them, never a
colleague's, in one UPDATE. A tab that stops polling (closed) lets them lapse.

An operator may look at one image for minutes; without this the images buffered behind it
lapsed after queue.LEASE_SECONDS, a colleague was served them, and the operator's saves of
them were refused as conflicts.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from labeling.models import Lease, Taxonomy
from labeling.services import queue
from tests.test_label_concurrency import _age_leases
from tests.test_review_views import as_user, urls

pytestmark = pytest.mark.django_db


def fetch(client, world, limit: int) -> list[int]:
    """What a review page is served (and leased) by the queue."""
    return [i["asset"] for i in client.get(urls(world, "queue_json"), {"limit": limit}).json()["items"]]


def poll(client, world, hold: list[int]):
    return client.get(urls(world, "status_json"), {"hold": ",".join(map(str, hold))})


def leases(asset_ids: list[int]) -> dict[int, tuple[str, object]]:
    """asset id -> (lease holder, expiry)"""
    rows = Lease.objects.filter(asset_id__in=asset_ids).values_list("asset_id", "user__username", "expires")
    return {a: (user, expires) for a, user, expires in rows}


def test_the_poll_keeps_the_leases_of_what_the_page_holds_past_the_lease_time(world, lib):
    olga, alice = as_user(world.olga), as_user(world.alice)
    held = fetch(olga, world, 5)
    assert len(held) == 5
    _age_leases(100)
    # olga sits on held[0]; her page polls, naming what it still holds (not held[4], skipped)
    r = poll(olga, world, held[:4])
    assert r.status_code == 200 and r.json()["unlabeled"] == 6  # still the status, as before
    _age_leases(30)  # 130 s after the fetch: past queue.LEASE_SECONDS
    theirs = fetch(alice, world, 10)
    assert not set(held[:4]) & set(theirs)
    assert held[4] in theirs  # not held any more: lapsed, so a colleague gets it
    assert {user for user, _ in leases(held[:4]).values()} == {"olga"}


def test_a_tab_that_stops_polling_lets_its_leases_lapse(world, lib):
    olga, alice = as_user(world.olga), as_user(world.alice)
    held = fetch(olga, world, 5)
    poll(olga, world, [])  # another page of hers, holding nothing: renews nothing
    _age_leases(queue.LEASE_SECONDS + 1)
    assert set(held) <= set(fetch(alice, world, 10))


def test_the_poll_renews_only_the_callers_own_leases(world, lib):
    olga, alice = as_user(world.olga), as_user(world.alice)
    hers, mine = fetch(alice, world, 2), fetch(olga, world, 2)
    colour = Taxonomy.objects.create(client=world.acme, name="colour", kind=Taxonomy.Kind.MULTI)
    # olga's lease on the same image in another taxonomy: not this page's to renew
    Lease.objects.create(taxonomy=colour, asset_id=mine[0], user=world.olga, expires=timezone.now())
    _age_leases(60)
    before = leases(hers)
    r = poll(olga, world, [*hers, *mine, lib.other.pk, 10**9])  # a colleague's, her own, globex's, none
    assert r.status_code == 200
    assert leases(hers) == before  # alice's: neither renewed nor taken over
    renewed = Lease.objects.filter(taxonomy=world.brand, asset_id__in=mine, user=world.olga)
    assert renewed.filter(expires__gt=timezone.now() + timedelta(seconds=queue.LEASE_SECONDS - 5)).count() == 2
    assert Lease.objects.get(taxonomy=colour).expires < timezone.now()
    assert not Lease.objects.filter(asset_id=lib.other.pk).exists()


def test_a_lapsed_lease_a_colleague_took_over_stays_theirs(world, lib):
    olga, alice = as_user(world.olga), as_user(world.alice)
    held = fetch(olga, world, 5)
    _age_leases(queue.LEASE_SECONDS + 1)  # olga's page was gone (closed, asleep) past the lease
    taken = set(held) & set(fetch(alice, world, 5))
    assert taken
    before = leases(list(taken))
    poll(olga, world, held)  # her page is back and names what it held
    assert leases(list(taken)) == before  # still alice's: olga's save of them will be a 409


def test_a_viewers_poll_renews_nothing_and_another_clients_is_not_found(world, lib):
    held = fetch(as_user(world.olga), world, 3)
    _age_leases(60)
    before = leases(held)
    assert poll(as_user(world.vic), world, held).status_code == 200
    assert poll(as_user(world.otto), world, held).status_code == 404
    assert leases(held) == before


def test_the_renewal_is_one_update_and_a_poll_without_holds_touches_no_lease(world, lib):
    olga = as_user(world.olga)
    held = fetch(olga, world, 5)
    for hold, expected in ((held, ["UPDATE"]), ([], [])):
        with CaptureQueriesContext(connection) as ctx:
            assert poll(olga, world, hold).status_code == 200
        on_leases = [q["sql"].split()[0] for q in ctx.captured_queries if '"labeling_lease"' in q["sql"]]
        assert on_leases == expected, ctx.captured_queries


@pytest.mark.parametrize("hold", ["x", "1,,-2", "99999999999999999999999"])
def test_a_bad_hold_list_is_a_400_naming_the_field(world, lib, hold):
    r = as_user(world.olga).get(urls(world, "status_json"), {"hold": hold})
    assert r.status_code == 400 and r.json()["field"] == "hold"
