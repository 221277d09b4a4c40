"""Explore work that must not grow with every promotion or page load: the recluster task
rebuilds only when vectors changed and never twice at once, second look reuses its scores,
the cluster overview and a bulk action stay bounded in queries, and retired tags are not
offered by clusters or tiles."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from .conftest import copy_shoes


@pytest.fixture
def worker(monkeypatch):
    """The broker delivers recluster messages to this process at once, and records them."""
    from labeling import tasks
    from labeling.services import labels

    sent: list[int] = []
    monkeypatch.setattr(labels, "request_retrain_check", lambda taxonomy_id: False)
    monkeypatch.setattr(tasks.recluster, "apply_async",
                        lambda args, **kwargs: sent.append(args[0]) or tasks.recluster(*args))
    return sent


def label_the_rest(explored, user=None, wrong: dict[int, str] | None = None) -> None:
    from labeling.services import labels

    for asset_id, brand in explored.truth.items():
        if asset_id not in explored.seeded:
            tag = explored.tags[(wrong or {}).get(asset_id, brand)]
            labels.save_label(explored.world.brand, explored.assets[asset_id], [tag], user=user, notify=False)


def writes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]


def test_a_promotion_with_unchanged_vectors_refreshes_cluster_stats_without_rebuilding_clusters_or_map(
    explored, worker, django_capture_on_commit_callbacks
):
    from labeling import tasks
    from labeling.models import Clustering
    from labeling.services import clusters, training

    acme, key = explored.world.acme.pk, str(explored.world.brand.pk)
    first = tasks.recluster(acme)  # makes the map
    map_mtime = clusters.map_path(acme).stat().st_mtime_ns
    label_the_rest(explored)
    with django_capture_on_commit_callbacks(execute=True):
        run = training.train_now(explored.world.brand)
    assert run.state == "promoted" and worker == [acme]
    assert clusters.current(acme).pk == first == explored.clustering.pk
    assert Clustering.objects.filter(client_id=acme).count() == 1
    assert clusters.map_path(acme).stat().st_mtime_ns == map_mtime
    current = clusters.current(acme)
    assert sum(c.stats[key]["n_unlabeled"] for c in current.clusters.all()) == 0  # the 18 new labels count


def test_a_repeated_recluster_message_writes_nothing(explored):
    from labeling import tasks

    acme = explored.world.acme.pk
    tasks.recluster(acme)
    with CaptureQueriesContext(connection) as queries:
        assert tasks.recluster(acme) == explored.clustering.pk
    assert writes(queries) == [] and len(queries) <= 6, [q["sql"] for q in queries.captured_queries]


def test_an_import_rebuilds_clusters_and_map_with_the_new_images(explored, worker, shoe_paths, tmp_path):
    from labeling import tasks
    from labeling.services import clusters, importing

    acme = explored.world.acme.pk
    copy_shoes(shoe_paths, tmp_path / "more", per_brand=1, start=20)
    job = importing.create_job(explored.world.acme, str(tmp_path / "more"))
    assert tasks.run_import(job.pk) == "succeeded" and worker == [acme]
    rebuilt = clusters.current(acme)
    assert rebuilt.pk != explored.clustering.pk and rebuilt.stats["n"] == 27
    assert not clusters.map_stale(acme)
    assert sorted(p["id"] for p in clusters.map_points(explored.world.brand)["points"]) == sorted(
        explored.world.acme.assets.values_list("id", flat=True))


def test_no_build_starts_beside_a_running_one_and_a_build_killed_long_ago_stops_blocking(explored, shoe_paths, tmp_path):
    from labeling.models import Clustering, JobState
    from labeling.services import clusters, importing

    acme = explored.world.acme
    killed = Clustering.objects.create(client=acme, backbone="x", k=2, state=JobState.RUNNING)
    copy_shoes(shoe_paths, tmp_path / "more", per_brand=1, start=20)
    importing.import_paths(acme, tmp_path / "more")
    clustering, action = clusters.update(acme.pk)
    assert (clustering.pk, action) == (explored.clustering.pk, "waiting")
    Clustering.objects.filter(pk=killed.pk).update(created=killed.created - clusters.BUILD_STALE)
    clustering, action = clusters.update(acme.pk)
    assert action == "built" and clustering.stats["n"] == 27
    killed.refresh_from_db()
    assert killed.state == JobState.FAILED and killed.error.startswith("abandoned")


def test_the_recluster_task_is_acknowledged_on_receipt_so_a_worker_killed_for_memory_does_not_get_it_again():
    from labeling import tasks

    assert tasks.recluster.acks_late is False and tasks.recluster.reject_on_worker_lost is False


def test_a_second_look_reload_reuses_its_scores_until_a_label_is_added_or_undone(explored, monkeypatch, client):
    import ml.noise
    from labeling.services import labels, second_look

    calls = []
    real = ml.noise.suspicion_components
    monkeypatch.setattr(ml.noise, "suspicion_components", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    tax, tags = explored.world.brand, explored.tags
    unseeded = [a for a in explored.truth if a not in explored.seeded]
    flipped = next(a for a in unseeded if explored.truth[a] == "nike")
    label_the_rest(explored, user=explored.world.olga, wrong={flipped: "adidas"})
    first = second_look.second_look(tax).rows
    assert second_look.second_look(tax).rows == first and len(calls) == 1
    labels.save_label(tax, explored.assets[flipped], [tags["adidas"]], user=explored.world.alice)  # "keep"
    assert flipped not in [r["asset"] for r in second_look.second_look(tax).rows] and len(calls) == 1
    corrected = next(r for r in first if r["asset"] not in (flipped, unseeded[-1]))
    other = next(t for t in tags.values() if t != corrected["given"])
    labels.save_label(tax, explored.assets[corrected["asset"]], [other], user=explored.world.alice, notify=False)
    assert corrected["asset"] not in [r["asset"] for r in second_look.second_look(tax).rows] and len(calls) == 1
    labels.undo_last(tax, explored.world.olga)  # her last label goes: one label fewer, computed again
    assert len(second_look.second_look(tax).rows) == 22 and len(calls) == 2  # 23 labels, the kept one left out


def test_the_cluster_overview_fetches_every_clusters_thumbnails_in_one_query(explored, django_assert_max_num_queries):
    from labeling.services import clusters
    from labeling.services.queue import asset_urls

    clustering = clusters.recluster(explored.world.acme.pk, k=8)
    with django_assert_max_num_queries(3):  # retired tags, clusters, thumbnails: not one per cluster
        rows = clusters.overview(explored.world.brand, clustering, thumbs=2)
    assert len(rows) == 8
    for r in rows:
        assert r["thumbs"] == [asset_urls(a)["thumb"] for a in clusters.members(r["cluster"])[:2]]


def test_a_bulk_action_on_large_clusters_leaves_their_stats_to_the_worker_and_reads_no_label_table(
    explored, monkeypatch
):
    from labeling import tasks
    from labeling.models import Label
    from labeling.services import clusters

    sent: list[int] = []
    monkeypatch.setattr(tasks.recluster, "apply_async", lambda args, **kwargs: sent.append(args[0]))
    monkeypatch.setattr(clusters, "IN_MAX", 4)  # every cluster of 24 shoes in 3 is "large"
    key = str(explored.world.brand.pk)
    label_the_rest(explored)
    asset = Label.objects.filter(taxonomy=explored.world.brand, is_current=True).order_by("-pk")[0].asset_id
    with CaptureQueriesContext(connection) as queries:
        clusters.refresh_for_assets(explored.world.acme.pk, [asset])
    assert not any('"labeling_label"' in q["sql"] for q in queries.captured_queries), queries.captured_queries
    assert sent == [explored.world.acme.pk]
    assert sum(c.stats[key]["n_unlabeled"] for c in explored.clustering.clusters.all()) == 18  # not yet
    tasks.recluster(*sent)
    assert sum(c.stats[key]["n_unlabeled"] for c in explored.clustering.clusters.all()) == 0


def client_page(explored, path: str) -> str:
    from django.test import Client as HttpClient

    c = HttpClient()
    c.force_login(explored.world.olga)
    r = c.get(f"/c/acme/t/{explored.world.brand.pk}/{path}")
    assert r.status_code == 200, (path, r.status_code)
    return r.content.decode()


def test_a_retired_tag_is_offered_neither_as_a_clusters_majority_nor_as_a_tiles_suggestion(explored):
    from labeling.models import Suggestion, Tag
    from labeling.services import clusters, similarity

    tax, key = explored.world.brand, str(explored.world.brand.pk)
    majorities = [c.stats[key]["majority_suggested"] for c in explored.clustering.clusters.all()]
    retired = max(set(m for m in majorities if m is not None), key=majorities.count)
    Tag.objects.filter(pk=retired).update(retired=True)
    assert Suggestion.objects.filter(model_version_id=tax.live_model_id, top1_tag_id=retired).exists()
    shown = [r["stats"].get("majority_suggested") for r in clusters.overview(tax, explored.clustering)]
    assert retired not in shown
    tiles = similarity.describe(tax, list(explored.assets))
    assert all(t["suggested"] != retired for t in tiles.values())
    assert any(t["suggested"] is None and t["uncertainty"] is not None for t in tiles.values())
    clusters.refresh_stats(explored.clustering)
    assert retired not in [c.stats[key]["majority_suggested"] for c in explored.clustering.clusters.all()]
    # a label that carries the retired tag still names it on its tile (it showed "?")
    seeded = next(a for a in explored.seeded if explored.tags[explored.truth[a]] == retired)
    html = client_page(explored, f"clusters/{explored.clustering.clusters.get(members__asset_id=seeded).index}/")
    assert f"{Tag.objects.get(pk=retired).name} (retired)" in html
