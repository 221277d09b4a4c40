"""Suggestions: a model version's probabilities for every asset, with the queue's sort keys."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet

from ml.heads import LinearHead
from ml.selection import POOL_FACTOR, diverse_pick
from ml.uncertainty import entropy, margin, uncertainty_score

from ..models import UNPLANNED, Asset, Label, ModelVersion, Suggestion, Tag, Taxonomy
from . import localmatch, vectors
from .labels import retired_among, suggested_tag_ids

WRITE_BATCH = 2000
SCORE_CHUNK = 20_000  # assets per predict + write round
MAX_PLAN = 500  # planned queue positions per model version (k-means of 3x that many vectors)
# what a rescore rewrites; queue_rank goes back to unplanned until plan_queue runs again
SCORE_FIELDS = ["probs", "top1_tag", "top1_prob", "margin", "entropy", "uncertainty", "is_labeled", "queue_rank"]


def artifact_path(mv: ModelVersion) -> Path:
    return settings.TAGLOOP_MODEL_DIR / mv.artifact


@functools.lru_cache(maxsize=32)
def _load_head(path: str, mtime: float) -> LinearHead:
    return LinearHead.load(path)


def load_head(mv: ModelVersion) -> LinearHead:
    path = artifact_path(mv)
    # mtime in the cache key: a re-written artifact is never served stale.
    return _load_head(str(path), path.stat().st_mtime)


def predict(mv: ModelVersion, X: np.ndarray, files: Sequence | None = None) -> np.ndarray:
    """Probabilities of images that are not assets (the predict API); ``files``: the open image
    files, for the version's local evidence when it has some."""
    P = load_head(mv).predict_proba(X)
    local = localmatch.for_version(mv) if files is not None else None
    return local.fuse_files(P, files) if local else P


def score(
    taxonomy: Taxonomy, mv: ModelVersion, asset_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write Suggestion rows of ``mv`` for the given assets (all embedded ones when None).

    Works through the library in chunks, so a million assets never sit in memory at once as
    float32 vectors or as unsaved rows. Each chunk replaces its rows: rerunning is harmless.
    ``progress(done, total)`` is called after each chunk (a training run's heartbeat).
    """
    store = vectors.store_for(taxonomy.client_id, mv.backbone)
    wanted = store.ids() if asset_ids is None else np.asarray(list(asset_ids), dtype=np.int64)
    head, local = load_head(mv), localmatch.for_version(mv)
    chunk = localmatch.SCORE_CHUNK if local else SCORE_CHUNK  # matching is ~100x slower per asset
    # read once: a tag retired during the scoring enqueues rescore_live, which scores again
    retired = set(taxonomy.tags.filter(retired=True).values_list("pk", flat=True))
    n = 0
    for start in range(0, len(wanted), chunk):
        ids, X = store.get(_existing(taxonomy.client_id, wanted[start : start + chunk]))
        if len(ids):
            P = head.predict_proba(X)
            n += _write(taxonomy, mv, head, ids, local.fuse_assets(P, ids) if local else P, retired)
        if progress:
            progress(min(start + chunk, len(wanted)), len(wanted))
    return n


def _existing(client_id: int, ids: np.ndarray) -> np.ndarray:
    """The ids that are still assets of the client. The vector store is append-only, so it
    keeps the vectors of deleted assets, and one Suggestion row for such an id would fail the
    whole write (and every later retrain) on its foreign key."""
    alive = Asset.objects.filter(client_id=client_id, pk__in=[int(i) for i in ids]).values_list("id", flat=True)
    return np.fromiter(alive, dtype=np.int64)


def without_retired(P: np.ndarray, tag_ids: Sequence[int], retired: Collection[int], multilabel: bool) -> np.ndarray:
    """``P`` with retired tags' columns at 0. Single-label rows are renormalised over the active
    tags: the share a retired tag held would otherwise leave the runner-up as a "sure" top tag
    at 1 % (1 - margin near 0 sorted it first in the confident queue). A row whose active tags
    all had 0 stays 0: margin 0, so it is shown as unsure, not as sure."""
    cols = [j for j, t in enumerate(tag_ids) if t in retired]
    if not cols:
        return P
    P = np.array(P, dtype=np.float64)
    P[:, cols] = 0.0
    if not multilabel:
        total = P.sum(axis=1, keepdims=True)
        np.divide(P, total, out=P, where=total > 0)
    return P


def _fields(P: np.ndarray, tag_ids: Sequence[int], multilabel: bool, thresholds) -> list[dict]:
    """The stored fields of each row of ``P`` (already without retired tags): the queue's keys."""
    unc = uncertainty_score(P, multilabel=multilabel, thresholds=thresholds)
    ent, mar = entropy(P), margin(P)
    top = P.argmax(axis=1)
    return [
        {"probs": [round(float(p), 5) for p in P[r]], "top1_tag_id": tag_ids[int(top[r])],
         "top1_prob": float(P[r, top[r]]), "margin": float(mar[r]), "entropy": float(ent[r]),
         "uncertainty": float(unc[r])}
        for r in range(len(P))
    ]


def current_view(s: Suggestion, retired: Collection[int], multilabel: bool) -> Suggestion:
    """``s`` as the rescore after a retire will write it (rescore_live), computed in memory and
    never saved: until the worker has run, a row written while a tag was still active must not
    offer a 1 % runner-up as a sure suggestion. ``s.model_version`` is read, so pass rows with it
    loaded. A row that gives retired tags nothing is returned as it is."""
    mv = s.model_version
    if not any(p > 0 for t, p in zip(mv.tag_ids, s.probs) if t in retired):
        return s
    P = without_retired(np.array([s.probs], dtype=np.float64), mv.tag_ids, retired, multilabel)
    thresholds = (mv.metrics or {}).get("thresholds") if multilabel else None
    for name, value in _fields(P, mv.tag_ids, multilabel, thresholds)[0].items():
        setattr(s, name, value)
    return s


def ranked_tags(tag_ids: Sequence[int], probs, tags: dict[int, Tag], top: int | None = None) -> list[dict]:
    """Active tags by probability, best first (retired tags are no longer offered)."""
    pairs = sorted(zip(tag_ids, probs), key=lambda tp: -float(tp[1]))
    out = [{"tag": t, "name": tags[t].path, "prob": round(float(p), 4)} for t, p in pairs
           if t in tags and not tags[t].retired]
    return out[:top]


def as_shown(taxonomy: Taxonomy, s: Suggestion, tags: dict[int, Tag],
             retired: Collection[int] | None = None) -> tuple[Suggestion, list[int]]:
    """A live row as the review page, the API and the exports all show it: in its current view
    (tags retired since it was written left out), and the tag ids it suggests (sorted). ``tags``:
    the taxonomy's tags by id, already read (``retired``: those retired, if already known);
    ``s.model_version`` loaded."""
    retired = retired_among(tags) if retired is None else retired
    s = current_view(s, retired, taxonomy.multilabel)
    return s, sorted(suggested_tag_ids(taxonomy, s, retired))


def _write(taxonomy: Taxonomy, mv: ModelVersion, head: LinearHead, ids: np.ndarray, P: np.ndarray,
           retired: Collection[int]) -> int:
    P = without_retired(P, mv.tag_ids, retired, head.multilabel)
    fields = _fields(P, mv.tag_ids, head.multilabel, head.thresholds)
    asset_ids = [int(i) for i in ids]
    labeled = set(
        Label.objects.filter(taxonomy=taxonomy, is_current=True, asset_id__in=asset_ids).values_list(
            "asset_id", flat=True
        )
    )
    rows = [
        Suggestion(asset_id=a, taxonomy=taxonomy, model_version=mv, is_labeled=a in labeled, **fields[r])
        for r, a in enumerate(asset_ids)
    ]
    with transaction.atomic():
        # An upsert, not delete + insert: a label keeps pointing at the row it was saved
        # against, and no row is deleted through Django's collector (see delete_suggestions).
        Suggestion.objects.bulk_create(
            rows, batch_size=WRITE_BATCH, update_conflicts=True, unique_fields=["asset", "model_version"],
            update_fields=SCORE_FIELDS,
        )
    return len(rows)


def plan_queue(taxonomy: Taxonomy, mv: ModelVersion) -> int:
    """Order the queue's first pages for this model version: the labels until the next
    retrain are one active-learning batch, so they should not all be spent on one ambiguous
    product. ml.selection.diverse_pick (what `ml.simulate` measures as "diverse") chooses
    that many of the least sure unlabeled assets, one per embedding cluster; they get
    queue_rank 0, 1, ... (least sure first) and the queue serves them before the rest, which
    keeps the plain uncertainty order. Returns how many were planned."""
    k = max(1, min(int(taxonomy.retrain_threshold), MAX_PLAN))
    # a generous window: near-duplicates and assets without a vector drop out of it
    window = list(
        Suggestion.objects.filter(model_version=mv, is_labeled=False)
        .order_by("-uncertainty", "id")
        .values_list("id", "asset_id", "uncertainty")[: 2 * POOL_FACTOR * k]
    )
    Suggestion.objects.filter(model_version=mv).exclude(queue_rank=UNPLANNED).update(queue_rank=UNPLANNED)
    if not window:
        return 0
    by_asset = {a: (sid, u) for sid, a, u in window}
    ids, X = vectors.store_for(taxonomy.client_id, mv.backbone).get([a for _, a, _ in window])
    if not len(ids):
        return 0
    scores = np.array([by_asset[int(a)][1] for a in ids])
    picked = diverse_pick(scores, X, k, seed=mv.version)
    rows = [Suggestion(pk=by_asset[int(ids[i])][0], queue_rank=r) for r, i in enumerate(picked)]
    Suggestion.objects.bulk_update(rows, ["queue_rank"], batch_size=WRITE_BATCH)
    return len(rows)


def score_new_assets(client_id: int, asset_ids: Sequence[int]) -> int:
    """Give freshly imported assets suggestions from every live model of their client."""
    n = 0
    for taxonomy in Taxonomy.objects.filter(client_id=client_id, live_model__isnull=False).select_related(
        "live_model"
    ):
        n += score(taxonomy, taxonomy.live_model, asset_ids)
    return n


def score_unscored(taxonomy: Taxonomy, mv: ModelVersion, progress: Callable[[int, int], None] | None = None) -> int:
    """Score the assets embedded for ``mv``'s backbone that have no row of ``mv`` yet.

    Called right after ``mv`` went live: an import that embedded assets while ``mv`` was being
    scored gave them rows of the model that was live then only. An import that sets
    ``embedded_with`` after this query reads the live pointer after it too, so one pass is enough.
    """
    scored = Suggestion.objects.filter(model_version=mv, asset_id=OuterRef("pk"))
    ids = list(
        Asset.objects.filter(client_id=taxonomy.client_id, embedded_with=mv.backbone)
        .exclude(Exists(scored))
        .values_list("id", flat=True)
    )
    return score(taxonomy, mv, ids, progress) if ids else 0


def reconcile_labeled(taxonomy: Taxonomy, mv: ModelVersion) -> int:
    """Set ``is_labeled`` of ``mv``'s rows from the current labels, in one UPDATE of the rows that
    differ. _write reads the labeled set before it inserts, and a label (or undo) committed in
    between updated only the rows it could see: without this the new live model would serve a
    labeled asset again, or hide an unlabeled one, until the next retrain."""
    current = Exists(Label.objects.filter(taxonomy=taxonomy, is_current=True, asset_id=OuterRef("asset_id")))
    return Suggestion.objects.filter(model_version=mv).exclude(is_labeled=current).update(is_labeled=current)


def rescore_live(taxonomy: Taxonomy) -> int:
    """After a tag was retired or brought back: the live model's rows again, over the tags active
    now (_write), with the queue planned again, so the order (the confident one above all)
    follows. The head runs again rather than the stored rows being re-weighted: a tag brought
    back needs the share its rows no longer hold. A promotion meanwhile (the live pointer moved)
    scores the new live model too. Returns the rows written."""
    n, done = 0, None
    for _ in range(3):  # bounded: a promotion takes a retrain, not seconds
        taxonomy.refresh_from_db(fields=["live_model"])
        mv = taxonomy.live_model
        if mv is None or mv.pk == done:
            break
        n += score(taxonomy, mv)
        plan_queue(taxonomy, mv)
        reconcile_labeled(taxonomy, mv)  # labels committed while its rows were written
        done = mv.pk
    return n


def delete_suggestions(rows: QuerySet[Suggestion]) -> int:
    """Delete suggestion rows in two statements. QuerySet.delete() would SELECT every row
    (JSON probs included) to null Label.suggestion one batch at a time: minutes and gigabytes
    for a million rows. The labels keep their tags; only the link to the old row goes."""
    with transaction.atomic():
        Label.objects.filter(suggestion__in=rows.values("id")).update(suggestion=None)
        return rows._raw_delete(rows.db)


def prune_old_suggestions(taxonomy: Taxonomy, keep: int = 2) -> int:
    """Keep suggestions of the live model and the newest versions only; the rest is history
    already summarised in each ModelVersion's metrics."""
    versions = list(ModelVersion.objects.filter(taxonomy=taxonomy).only("id", "artifact"))  # newest first
    keep_ids = {mv.pk for mv in versions[:keep]} | ({taxonomy.live_model_id} if taxonomy.live_model_id else set())
    for mv in versions:
        if mv.pk not in keep_ids:
            localmatch.delete(mv, keep_record=True)  # up to 1 GB each; such a version never serves again
    return delete_suggestions(Suggestion.objects.filter(taxonomy=taxonomy).exclude(model_version_id__in=keep_ids))
