"""Clusters of a client's library and the 2-D map: built aside, switched in one transaction.

``recluster`` runs k-means over the client's vectors, writes a new Clustering with its
Cluster and ClusterMember rows while the current one keeps serving pages, then flips
``is_current`` in one transaction. Per-cluster statistics (per taxonomy) come from
``ml.clustering.cluster_stats``; ``refresh_stats`` recomputes them for a few clusters after a
bulk action without running k-means again. ``update`` is what the worker runs after imports
and promotions: k-means only when the vector store changed since the current clustering.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
from django.db import transaction
from django.db.models import Count, F, Max, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from ml import clustering as ml_clustering
from ml.atomic import atomic_write

from ..models import Client, Cluster, ClusterMember, Clustering, JobState, Label, LabelEvent, Suggestion, Tag, Taxonomy
from . import vectors

log = logging.getLogger(__name__)
KEEP_OLD = 1  # previous clusterings kept (a page opened before the switch can still finish)
WRITE_BATCH = 5000
MAP_INLINE_MAX = 5000  # points; t-SNE of more takes longer than a page view should wait
IN_MAX = 5000  # ids in one IN (...) clause; SQLite caps bound parameters
# A build has no heartbeat; one still "running" after this long was killed (an OOM kill leaves
# no trace) and must not keep blocking the next one.
BUILD_STALE = timedelta(hours=2)


class Update(NamedTuple):
    clustering: Clustering | None
    # "built"; "refreshed" (stats only); "current" (nothing to do); "waiting": the store changed
    # but no build started (another one runs, or fewer than 2 vectors)
    action: str


def current(client_id: int) -> Clustering | None:
    return Clustering.objects.filter(client_id=client_id, is_current=True).first()


def store_version(client_id: int) -> str:
    """Short fingerprint of the client's vector store for the current backbone; changes when
    vectors are added (or compacted). Recorded on each clustering and map."""
    return hashlib.sha1("\n".join(vectors.store_for(client_id).version()).encode()).hexdigest()[:16]


def _stats_key(client_id: int) -> str:
    """What cluster stats are derived from besides the members: each taxonomy's live model, the
    labels (every save and undo writes a LabelEvent) and the retired tags (a retire rescores the
    live model's rows: tasks.rescore_live). Equal key, equal stats."""
    models = list(Taxonomy.objects.filter(client_id=client_id).order_by("pk").values_list("pk", "live_model_id"))
    last = LabelEvent.objects.filter(taxonomy__client_id=client_id).aggregate(m=Max("pk"))["m"]
    retired = list(Tag.objects.filter(taxonomy__client_id=client_id, retired=True).order_by("pk")
                   .values_list("pk", flat=True))
    return f"{models}|{last}|{retired}"


def update(client_id: int) -> Update:
    """After an import, a promotion or a large bulk action: k-means (``recluster``) only when
    the vector store changed since the current clustering was built; otherwise only the
    per-taxonomy stats, and nothing when they are current already. Piled-up or duplicate
    messages therefore cost a few queries each, and a build is never started while another
    one runs for this client (two at once double the memory of the largest step)."""
    version = store_version(client_id)
    clustering = current(client_id)
    action = "current"
    if clustering is None or clustering.stats.get("store_version") != version:
        built = recluster(client_id, version=version, unless_building=True)
        if built is not None:
            return Update(built, "built")
        action = "waiting"  # another build runs (or < 2 vectors); the current stats still follow the labels
    if clustering is None:
        return Update(None, action)
    key = _stats_key(client_id)  # read before the labels: a label saved meanwhile leaves it stale, never wrong
    if clustering.stats.get("stats_key") != key:
        refresh_stats(clustering)
        Clustering.objects.filter(pk=clustering.pk).update(stats={**clustering.stats, "stats_key": key})
        clustering.refresh_from_db()
        action = "refreshed" if action == "current" else action
    return Update(clustering, action)


def _building(client_id: int) -> QuerySet:
    return Clustering.objects.filter(client_id=client_id, state=JobState.RUNNING,
                                     created__gte=timezone.now() - BUILD_STALE)


def _claim(client_id: int, version: str, k: int, unless_building: bool) -> Clustering | None:
    """The RUNNING row of a new build; None when ``unless_building`` and another build is
    under way. The client row lock makes check and insert one step across workers."""
    with transaction.atomic():
        list(Client.objects.select_for_update().filter(pk=client_id).values_list("pk"))
        Clustering.objects.filter(client_id=client_id, state=JobState.RUNNING,
                                  created__lt=timezone.now() - BUILD_STALE).update(
            state=JobState.FAILED, error=f"abandoned: no result after {BUILD_STALE}")
        if unless_building and _building(client_id).exists():
            return None
        return Clustering.objects.create(client_id=client_id, backbone=vectors.backbone_name(), k=k,
                                         state=JobState.RUNNING, stats={"store_version": version})


def recluster(client_id: int, k: int | None = None, seed: int = 0, *, version: str | None = None,
              unless_building: bool = False) -> Clustering | None:
    """k-means over all of the client's vectors; None when there are fewer than 2 (or, with
    ``unless_building``, when another build is under way)."""
    version = version or store_version(client_id)  # before the vectors: an add meanwhile leaves it stale, never wrong
    store = vectors.store_for(client_id)
    n = len(store)  # ids only: no vector is read for a build that does not start
    if n < 2:
        return None
    k = min(k or ml_clustering.choose_k(n), n)
    clustering = _claim(client_id, version, k, unless_building)
    if clustering is None:
        return None
    try:
        ids, X = store.all()  # the store only grows, so k <= n <= len(ids)
        result = ml_clustering.kmeans(X, k, seed=seed)
        del X  # the largest allocation of the build: gone before the member rows are made
        clusters = Cluster.objects.bulk_create(
            [Cluster(clustering=clustering, index=c, size=int((result.assign == c).sum())) for c in range(k)]
        )
        members = [
            ClusterMember(cluster=clusters[int(c)], asset_id=int(a), distance=float(d))
            for a, c, d in zip(ids, result.assign, result.distance)
        ]
        for s in range(0, len(members), WRITE_BATCH):
            ClusterMember.objects.bulk_create(members[s : s + WRITE_BATCH])
        key = _stats_key(client_id)
        refresh_stats(clustering)
    except Exception as exc:
        Clustering.objects.filter(pk=clustering.pk).update(state=JobState.FAILED, error=str(exc)[:2000])
        raise
    with transaction.atomic():
        Clustering.objects.filter(client_id=client_id, is_current=True).update(is_current=False)
        Clustering.objects.filter(pk=clustering.pk).update(
            is_current=True, state=JobState.SUCCEEDED, finished=timezone.now(),
            stats={"n": int(len(ids)), "k": k, "mean_distance": float(result.distance.mean()),
                   "store_version": version, "stats_key": key},
        )
    # A build still running elsewhere (an explicit rebuild beside the worker's) is not removed.
    old = Clustering.objects.filter(client_id=client_id, is_current=False).exclude(
        state=JobState.RUNNING).order_by("-id")[KEEP_OLD:]
    Clustering.objects.filter(pk__in=[c.pk for c in old]).delete()
    clustering.refresh_from_db()
    return clustering


def successor(old: Cluster, clustering: Clustering) -> Cluster | None:
    """The cluster of ``clustering`` that holds most of ``old``'s members (None when none of
    them is in it): where a link to a cluster of an earlier build should lead."""
    row = (ClusterMember.objects.filter(cluster__clustering=clustering,
                                        asset_id__in=ClusterMember.objects.filter(cluster=old).values("asset_id"))
           .values("cluster_id").annotate(n=Count("id")).order_by("-n", "cluster_id").first())
    return Cluster.objects.get(pk=row["cluster_id"]) if row else None


def _label_arrays(taxonomy: Taxonomy, asset_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label tag id or -1, suggested tag id or -1, uncertainty or NaN) per asset id.
    For multi-label taxonomies a label counts by its first tag (purity is then approximate).
    A suggestion of a tag retired since its model was trained counts as none: nobody may
    apply that tag any more."""
    pos = {int(a): i for i, a in enumerate(asset_ids)}
    label = np.full(len(asset_ids), -1, dtype=np.int64)
    suggested = np.full(len(asset_ids), -1, dtype=np.int64)
    unc = np.full(len(asset_ids), np.nan, dtype=np.float64)
    labels = Label.objects.filter(taxonomy=taxonomy, is_current=True)
    suggestions = Suggestion.objects.filter(model_version_id=taxonomy.live_model_id)
    if len(pos) <= IN_MAX:  # a few clusters: ask for their assets; all of them: read everything
        labels, suggestions = labels.filter(asset_id__in=list(pos)), suggestions.filter(asset_id__in=list(pos))
    for a, t in labels.values_list("asset_id", "tags").order_by("asset_id", "tags"):
        if a in pos and t is not None and label[pos[a]] < 0:
            label[pos[a]] = t
    if taxonomy.live_model_id:
        retired = set(Tag.objects.filter(taxonomy=taxonomy, retired=True).values_list("pk", flat=True))
        for a, t, u in suggestions.values_list("asset_id", "top1_tag_id", "uncertainty"):
            if a not in pos:
                continue
            suggested[pos[a]] = t if t is not None and t not in retired else -1
            unc[pos[a]] = u
    return label, suggested, unc


def refresh_stats(clustering: Clustering, clusters: QuerySet | list[int] | None = None) -> None:
    """Recompute Cluster.stats (one entry per taxonomy id) for some or all clusters."""
    qs = Cluster.objects.filter(clustering=clustering)
    if clusters is not None:
        qs = qs.filter(pk__in=clusters)
    rows = list(qs.order_by("index"))
    if not rows:
        return
    pos = {c.pk: i for i, c in enumerate(rows)}
    members = np.array(
        list(ClusterMember.objects.filter(cluster__in=rows).values_list("asset_id", "cluster_id")), dtype=np.int64
    ).reshape(-1, 2)
    asset_ids = members[:, 0]
    assign = np.array([pos[c] for c in members[:, 1]], dtype=np.int64)
    per_cluster: list[dict] = [{} for _ in rows]
    for taxonomy in Taxonomy.objects.filter(client_id=clustering.client_id):
        label, suggested, unc = _label_arrays(taxonomy, asset_ids)
        for i, s in enumerate(ml_clustering.cluster_stats(assign, len(rows), label, suggested, unc)):
            per_cluster[i][str(taxonomy.pk)] = s
    for cluster, stats in zip(rows, per_cluster):
        cluster.stats = stats
        cluster.size = stats[next(iter(stats))]["size"] if stats else cluster.size
    Cluster.objects.bulk_update(rows, ["stats", "size"], batch_size=500)


def refresh_for_assets(client_id: int, asset_ids: list[int]) -> None:
    """After labels change: recompute the stats of the current clusters holding these assets.
    Runs in the request of a bulk action, so only while those clusters are small enough to
    be read by id (IN_MAX members); larger ones would read every label and suggestion of
    every taxonomy, and are left to the worker's ``update``."""
    clustering = current(client_id)
    if clustering is None or not asset_ids:
        return
    if len(asset_ids) <= IN_MAX:
        touched = sorted(set(ClusterMember.objects.filter(
            cluster__clustering=clustering, asset_id__in=asset_ids).values_list("cluster_id", flat=True)))
        if sum(Cluster.objects.filter(pk__in=touched).values_list("size", flat=True)) <= IN_MAX:
            refresh_stats(clustering, touched)
            return
    from .. import tasks  # tasks import services: imported here to keep the graph acyclic

    tasks.enqueue_recluster(client_id)  # the labels changed, so its stats key did: it refreshes


def overview(taxonomy: Taxonomy, clustering: Clustering, thumbs: int = 6) -> list[dict]:
    """Clusters ranked by work saved for this taxonomy, each with a few central thumbnails
    (all fetched in one query)."""
    from .queue import asset_urls

    retired = set(taxonomy.tags.filter(retired=True).values_list("pk", flat=True))
    rows = []
    for c in Cluster.objects.filter(clustering=clustering):
        s = dict((c.stats or {}).get(str(taxonomy.pk)) or {})
        if s.get("majority_suggested") is not None and s["majority_suggested"] in retired:
            # retired after these stats were computed: offer no tag that may not be applied
            s.update(majority_suggested=None, agreement=None)
            s["work_saved"] = ml_clustering.work_saved(s)
        rows.append({"cluster": c, "stats": s, "work_saved": s.get("work_saved", 0.0)})
    rows.sort(key=lambda r: (-r["work_saved"], -r["cluster"].size))
    central = (
        ClusterMember.objects.filter(cluster__clustering=clustering)
        .annotate(rank=Window(RowNumber(), partition_by=[F("cluster_id")], order_by=[F("distance").asc(), F("asset_id").asc()]))
        .filter(rank__lte=thumbs).order_by("cluster_id", "rank").values_list("cluster_id", "asset_id")
    )
    urls: dict[int, list[str]] = {}
    for cluster_id, asset_id in central:
        urls.setdefault(cluster_id, []).append(asset_urls(asset_id)["thumb"])
    for r in rows:
        r["thumbs"] = urls.get(r["cluster"].pk, [])
    return rows


def members(cluster: Cluster) -> list[int]:
    """Asset ids of a cluster, nearest to the centroid first (the cluster page's order)."""
    return list(cluster.members.order_by("distance", "asset_id").values_list("asset_id", flat=True))


# -- map ---------------------------------------------------------------------------------
def map_path(client_id: int) -> Path:
    return vectors.store_for(client_id).root / "map.npz"


def map_stale(client_id: int) -> bool:
    """Whether the saved map was made from another state of the vector store (or is missing)."""
    path = map_path(client_id)
    if not path.exists():
        return True
    with np.load(path) as f:
        return "version" not in f.files or str(f["version"]) != store_version(client_id)


def compute_map(client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of every stored vector (t-SNE, sampled past 50k), saved atomically
    with the store version they were made from."""
    version = store_version(client_id)  # before the vectors: an add meanwhile leaves it stale, never wrong
    ids, X = vectors.store_for(client_id).all()
    xy = ml_clustering.embed_2d(X) if len(ids) else np.zeros((0, 2), np.float32)
    path = map_path(client_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, fsync=False) as f:  # recomputable; readers see old or new, never half
        np.savez(f, ids=ids, xy=xy, version=np.array(version))
    return ids, xy


def map_coordinates(client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The saved map, recomputed here when vectors were added since and the library is small;
    a large one keeps showing the saved map while the recluster task computes the new one."""
    path = map_path(client_id)
    ids, xy = np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
    if path.exists():
        with np.load(path) as f:
            ids, xy = f["ids"], f["xy"]
    n = len(vectors.store_for(client_id))
    if len(ids) == n:
        return ids, xy
    if n <= MAP_INLINE_MAX:
        return compute_map(client_id)
    from .. import tasks

    tasks.enqueue_recluster(client_id)
    return ids, xy


def map_points(taxonomy: Taxonomy) -> dict:
    """Everything the map page plots: per point id, x, y, label, suggestion, cluster, uncertainty."""
    from .similarity import describe

    ids, xy = map_coordinates(taxonomy.client_id)
    rows = describe(taxonomy, [int(i) for i in ids])
    clustering = current(taxonomy.client_id)
    cluster_of = {}
    if clustering:
        cluster_of = dict(
            ClusterMember.objects.filter(cluster__clustering=clustering).values_list("asset_id", "cluster__index")
        )
    points = []
    for a, (x, y) in zip(ids.tolist(), xy.tolist()):
        row = rows.get(a)
        if row is None:
            continue  # deleted since the map was made
        points.append({
            "id": a, "x": round(x, 4), "y": round(y, 4), "name": row["name"], "thumb": row["thumb"],
            "label": (row["label"] or [None])[0], "suggested": row["suggested"],
            "uncertainty": row["uncertainty"], "cluster": cluster_of.get(a),
        })
    return {"points": points}
