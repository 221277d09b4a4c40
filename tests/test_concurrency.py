"""Many operators at once, on real PostgreSQL: 8 API clients in threads (each thread has its
own database connection) label 1,000 assets from the leased queue. Every asset ends with
exactly one label, none is lost, and no asset has two current labels. Then pairs of writers
race on the same assets with base_label: one wins, the other gets a 409, nothing is lost.

Run with DATABASE_URL=postgres://... (SQLite serialises all writers, so it proves nothing).
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.db.models import Count
from rest_framework.test import APIClient

from labeling.models import Asset, Label, LabelEvent, Membership, Role
from labeling.services import labels
from tests._helpers import png_bytes

N_ASSETS, N_OPERATORS = 1000, 8


@pytest.fixture
def postgres(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("concurrency test needs PostgreSQL (set DATABASE_URL=postgres://...); SQLite serialises writers")


@pytest.fixture
def crowd(postgres, world, monkeypatch):
    from tests.conftest import make_user

    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: False)  # no worker here
    data = png_bytes(1)
    stored = default_storage.save("assets/shared/one.png", ContentFile(data))
    # One real file behind 1,000 rows (distinct sha256): nothing here embeds or decodes it.
    Asset.objects.bulk_create([
        Asset(client=world.acme, original_name=f"a{i}.png", sha256=f"{i:064x}", byte_size=len(data), width=24,
              height=24, format="PNG", file=stored)
        for i in range(N_ASSETS)
    ])
    operators = []
    for i in range(N_OPERATORS):
        user = make_user(f"op{i}")
        Membership.objects.create(user=user, client=world.acme, role=Role.OPERATOR)
        operators.append(user)
    return operators


def run_threads(target, args_list) -> list:
    results, errors = [None] * len(args_list), []

    def wrap(i, args):
        try:
            results[i] = target(*args)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=wrap, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def test_eight_operators_label_a_thousand_assets_and_every_label_is_stored_once(world, crowd):
    url = f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/"
    tag_ids = list(world.brand.tags.values_list("id", flat=True))

    def operator(user) -> Counter:
        c = APIClient()
        c.force_authenticate(user)
        seen, statuses = set(), Counter()
        while True:
            batch = c.get(url + "queue/?limit=10")
            assert batch.status_code == 200, batch.content
            items = batch.json()
            if not items:
                return statuses
            for item in items:
                assert item["asset"] not in seen, "the queue handed out an asset twice"
                seen.add(item["asset"])
                r = c.post(url + "labels/", {"asset": item["asset"], "tags": [tag_ids[item["asset"] % 3]],
                                             "base_label": None}, format="json")
                statuses[r.status_code] += 1

    started = time.monotonic()
    per_operator = run_threads(operator, [(u,) for u in crowd])
    elapsed = time.monotonic() - started
    statuses = sum(per_operator, Counter())
    print(f"\n{N_OPERATORS} operators, {N_ASSETS} assets: {dict(statuses)} in {elapsed:.1f}s; "
          f"per operator {[sum(s.values()) for s in per_operator]}")
    assert statuses == {201: N_ASSETS}, "leases should keep operators off each other's assets"
    assert Label.objects.filter(taxonomy=world.brand).count() == N_ASSETS
    assert Label.objects.filter(taxonomy=world.brand, is_current=True).values("asset").distinct().count() == N_ASSETS
    assert not Label.objects.filter(taxonomy=world.brand, is_current=True).values("asset").annotate(
        n=Count("id")).filter(n__gt=1).exists()
    assert LabelEvent.objects.filter(taxonomy=world.brand).count() == N_ASSETS
    assert all(sum(s.values()) > 0 for s in per_operator), "every operator got work"


def test_two_writers_racing_on_the_same_asset_one_wins_one_gets_409(world, crowd):
    url = f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/labels/"
    tag_ids = list(world.brand.tags.values_list("id", flat=True))
    targets = list(Asset.objects.filter(client=world.acme).order_by("id").values_list("id", flat=True)[:40])
    barrier = threading.Barrier(2)

    def writer(user, tag) -> list[int]:
        c = APIClient()
        c.force_authenticate(user)
        codes = []
        for asset_id in targets:
            barrier.wait()  # both send their write for this asset at the same moment
            r = c.post(url, {"asset": asset_id, "tags": [tag], "base_label": None}, format="json")
            codes.append(r.status_code)
        return codes

    a, b = run_threads(writer, [(crowd[0], tag_ids[0]), (crowd[1], tag_ids[1])])
    assert all(sorted(pair) == [201, 409] for pair in zip(a, b)), list(zip(a, b))
    for asset_id in targets:
        assert Label.objects.filter(asset_id=asset_id, taxonomy=world.brand).count() == 1
