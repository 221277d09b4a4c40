"""Retiring a tag (or bringing it back) rescores the live model's suggestions over the active
tags (tasks.rescore_live, asked on commit), and until that has run the review page and the API
never offer a runner-up as a sure suggestion (suggesting.current_view)."""
from __future__ import annotations

import numpy as np
import pytest

from labeling import tasks
from labeling.models import Suggestion, Tag
from labeling.services import queue
from tests._helpers import api

pytestmark = pytest.mark.usefixtures("no_broker", "fast_passwords")


def tag_url(world, tag_id: int) -> str:
    return f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/tags/{tag_id}/"


@pytest.fixture
def rescores(monkeypatch) -> list[int]:
    """Rescore requests, counted instead of sent."""
    asked: list[int] = []
    monkeypatch.setattr(tasks, "enqueue_rescore", asked.append)
    return asked


def test_retiring_a_tag_asks_for_one_rescore_on_commit_and_a_rename_asks_for_none(
        world, rescores, django_capture_on_commit_callbacks):
    tag = world.brand.tags.get(name="nike")
    with django_capture_on_commit_callbacks(execute=True):
        assert api(world.alice).patch(tag_url(world, tag.pk), {"name": "Nike"}, format="json").status_code == 200
    assert rescores == []
    with django_capture_on_commit_callbacks(execute=True):
        assert api(world.alice).patch(tag_url(world, tag.pk), {"retired": True}, format="json").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        tag.refresh_from_db()
        tag.retired = False  # as the admin's tag pages save it
        tag.save()
    assert rescores == [world.brand.pk, world.brand.pk]


def test_until_the_rescore_runs_a_retired_top_tag_gives_way_to_the_others_renormalised(world, lib, rescores):
    # lib's asset 0: adidas 0.8, converse 0.1, nike 0.1, stored as 10 % uncertain
    Tag.objects.filter(pk=lib.tags["adidas"]).update(retired=True)  # an update: no rescore runs
    items = queue.review_batch(world.brand, order="confident", limit=10)
    item = next(i for i in items if i["asset"] == lib.assets[0].pk)
    assert [t["prob"] for t in item["tags"]] == [0.5, 0.5]  # the share left, renormalised
    assert item["uncertainty"] == 1.0  # a tie: not sure, whatever the stored row says
    assert item["suggested"] == [lib.tags["converse"]]  # the model's first of the tie, never adidas
    url = f"/api/v1/clients/acme/taxonomies/{world.brand.pk}/assets/{lib.assets[0].pk}/suggestions/"
    shown = api(world.olga).get(url).json()
    assert shown["uncertainty"] == 1.0 and shown["suggested"] == [lib.tags["converse"]]
    stored = Suggestion.objects.get(model_version=lib.mv, asset=lib.assets[0])
    assert stored.top1_tag_id == lib.tags["adidas"] and stored.uncertainty == 0.1  # shown, not saved


def test_retiring_and_bringing_back_a_tag_rescores_the_live_model_and_the_confident_queue_follows(
        world, trained, settings, django_capture_on_commit_callbacks):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the task runs here, as a worker would
    live = world.brand.live_model
    rows = lambda: {s.asset_id: s for s in Suggestion.objects.filter(model_version=live)}  # noqa: E731
    before = rows()
    col = live.tag_ids.index(trained.tags["nike"])
    assert any(s.top1_tag_id == trained.tags["nike"] for s in before.values())  # precondition
    with django_capture_on_commit_callbacks(execute=True):
        r = api(world.alice).patch(tag_url(world, trained.tags["nike"]), {"retired": True}, format="json")
    assert r.status_code == 200
    after = rows()
    assert all(s.probs[col] == 0 and s.top1_tag_id != trained.tags["nike"] for s in after.values())
    for a, s in after.items():
        kept = np.delete(np.array(before[a].probs), col)  # stored to 5 decimals: compared to 0.1 %
        expected = kept / kept.sum()
        np.testing.assert_allclose(np.delete(np.array(s.probs), col), expected, rtol=1e-3, atol=2e-5)
        top2 = np.sort(expected)[-2:]
        assert s.uncertainty == pytest.approx(1 - (top2[1] - top2[0]), abs=1e-3)
    confident = queue.review_batch(world.brand, order="confident", limit=50)
    assert [i["uncertainty"] for i in confident] == sorted(i["uncertainty"] for i in confident)
    assert all(trained.tags["nike"] not in i["suggested"] for i in confident)

    with django_capture_on_commit_callbacks(execute=True):
        api(world.alice).patch(tag_url(world, trained.tags["nike"]), {"retired": False}, format="json")
    back = rows()
    for a, s in back.items():
        np.testing.assert_allclose(s.probs, before[a].probs, atol=2e-5)
        assert s.top1_tag_id == before[a].top1_tag_id
