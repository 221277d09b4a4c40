"""The whole loop with a real Celery worker process on the configured database and broker.

`./tagloop.sh test` runs this file on PostgreSQL + Redis, then again on the embedded
default (SQLite file + kombu filesystem broker).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse

from labeling.models import Label, Suggestion, TrainingRun
from labeling.services import labels, queue

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
REPO = Path(__file__).resolve().parent.parent


def database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def purge_broker() -> None:
    from tagloop.celery import app

    with app.connection_for_write() as conn:
        for name in ("default", "import", "train"):
            try:
                conn.default_channel.queue_purge(name)
            except Exception:  # the queue does not exist yet: nothing to purge
                pass


@contextlib.contextmanager
def worker_process(tmp_path: Path):
    """Run `celery worker -B` as its own process, pointed at this test's database and folders."""
    purge_broker()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        TAGLOOP_VECTOR_DIR=str(settings.TAGLOOP_VECTOR_DIR),
        TAGLOOP_MODEL_DIR=str(settings.TAGLOOP_MODEL_DIR),
        TAGLOOP_CACHE_DIR=str(settings.TAGLOOP_CACHE_DIR),
        TAGLOOP_SWEEP_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tagloop", "worker", "-B", "-Q", "default,import,train",
             "--pool", "solo", "--loglevel", "INFO", "-s", str(tmp_path / "beat-schedule")],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: b"ready." in log_path.read_bytes() or proc.poll() is not None, 90, "worker start")
        assert proc.poll() is None, log_path.read_text()
        yield proc, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def worker(tmp_path):
    with worker_process(tmp_path) as w:
        yield w


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def unlabeled_in_queue_order(taxonomy) -> list[int]:
    return [i["asset"] for i in queue.review_batch(taxonomy, limit=50)]


def test_labels_through_the_page_api_make_the_worker_retrain_and_promote(client, world, trained, worker):
    proc, log_path = worker
    taxonomy = world.brand
    taxonomy.retrain_threshold = 6
    taxonomy.save(update_fields=["retrain_threshold"])
    before = unlabeled_in_queue_order(taxonomy)
    assert taxonomy.live_model.version == 1

    # An operator labels N assets correctly, the way the review page does it.
    client.force_login(world.olga)
    for asset_id in before[:6]:
        brand = trained.truth[asset_id]
        r = client.post(
            reverse("label_json", args=["acme", taxonomy.pk]),
            json.dumps({"asset": asset_id, "tags": [trained.tags[brand]]}),
            content_type="application/json",
        )
        assert r.status_code == 200, r.content

    def promoted() -> bool:
        taxonomy.refresh_from_db()
        return taxonomy.live_model is not None and taxonomy.live_model.version == 2

    wait_for(promoted, 120, "model v2 to go live\n" + log_path.read_text()[-3000:])
    run = TrainingRun.objects.filter(taxonomy=taxonomy).order_by("-id").first()
    assert run.state == TrainingRun.State.PROMOTED
    assert run.labels_consumed == 6
    assert taxonomy.labels_since_train == 0
    v2 = taxonomy.live_model
    assert v2.n_labels == 6 + len(trained.seeded)
    # Every asset has a v2 suggestion, labeled ones are flagged, and the queue moved on.
    assert Suggestion.objects.filter(model_version=v2).count() == len(trained.assets)
    assert Suggestion.objects.filter(model_version=v2, is_labeled=True).count() == 12
    after = unlabeled_in_queue_order(taxonomy)
    assert set(after) == set(before) - set(before[:6])
    assert after != [a for a in before if a in set(after)], "queue order did not change with the new model"


def test_a_second_look_too_large_for_a_page_load_is_scored_by_the_worker(client, world, trained, worker, settings):
    proc, log_path = worker
    settings.TAGLOOP_SECOND_LOOK_INLINE = 3  # the seed's 6 labels count as a large taxonomy here
    client.force_login(world.olga)
    url = reverse("second_look", args=["acme", world.brand.pk])
    assert "Scoring 6 labels" in client.get(url).content.decode()

    def scored() -> bool:
        return "check model: " in client.get(url).content.decode()

    wait_for(scored, 60, "second look scores from the worker\n" + log_path.read_text()[-3000:])
    html = client.get(url).content.decode()
    assert html.count('class="card x-row"') == 6 and "second-status" not in html


def use_broker(app, url: str) -> None:
    """Point this process's publisher at another broker. Celery caches its connection and
    producer pools, built from the URL at first use, so they are dropped too."""
    app.conf.broker_url = url
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None


def test_a_label_saved_while_the_broker_is_down_still_leads_to_a_retrain(world, trained, tmp_path):
    from tagloop.celery import app

    taxonomy = world.brand
    taxonomy.retrain_threshold = 2
    taxonomy.save(update_fields=["retrain_threshold"])
    todo = unlabeled_in_queue_order(taxonomy)[:2]
    good_broker = app.conf.broker_url
    use_broker(app, "redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        assert labels.request_retrain_check(taxonomy.pk) is False
        for asset_id in todo:
            labels.save_label(taxonomy, trained.assets[asset_id], [trained.tags[trained.truth[asset_id]]], world.olga)
    finally:
        use_broker(app, good_broker)
    assert Label.objects.filter(asset_id__in=todo, is_current=True).count() == 2
    taxonomy.refresh_from_db()
    assert taxonomy.labels_since_train == 2 and taxonomy.live_model.version == 1
    assert not TrainingRun.objects.filter(taxonomy=taxonomy, state__in=TrainingRun.ACTIVE).exists()

    # The broker is back; nobody calls anything: the worker's periodic sweep finds the due retrain.
    with worker_process(tmp_path) as (proc, log_path):
        def retrained() -> bool:
            return TrainingRun.objects.filter(taxonomy=taxonomy, state__in=["promoted", "rejected"]).count() >= 2

        wait_for(retrained, 120, "the sweep to retrain\n" + log_path.read_text()[-3000:])
    taxonomy.refresh_from_db()
    assert taxonomy.labels_since_train == 0

