"""More like this: one FAISS index per client and backbone over the vector store.

The index file lives at TAGLOOP_VECTOR_DIR/<client>/<backbone>/index.faiss, next to the
client's vectors, so another client's assets can never be in it. A new backbone gets its own
file (the old one stays until it is removed), and ``rebuild`` writes aside and swaps
atomically. Assets embedded after the last build are added on the next read, so an import
never waits for an index rebuild.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
from django.conf import settings

from ml.atomic import atomic_write
from ml.index import VectorIndex

from ..models import Asset, Label, Suggestion, Taxonomy
from . import vectors

log = logging.getLogger(__name__)
FILTERS = ("all", "labeled", "unlabeled", "tag")
OVERFETCH = 10  # neighbours fetched per neighbour asked for, when a filter drops some
_lock = threading.Lock()  # one writer per process; across processes os.replace decides


def index_path(client_id: int, backbone: str | None = None) -> Path:
    return settings.TAGLOOP_VECTOR_DIR / str(client_id) / (backbone or vectors.backbone_name()) / "index.faiss"


# index path -> (index file mtime, store version) last seen to hold exactly the stored ids;
# saves listing and comparing every id (~0.2 s at 1M vectors) on each "more like this".
_in_sync: dict[str, tuple] = {}


@functools.lru_cache(maxsize=4)  # a 1M-image index holds 2.6 GB
def _load(path: str, mtime_ns: int) -> VectorIndex:
    # mtime in the key: after a rebuild's os.replace the next read opens the new file, while
    # callers still holding the old object keep searching it.
    return VectorIndex.load(path)


def rebuild(client_id: int, backbone: str | None = None) -> VectorIndex | None:
    """Build the client's index from all stored vectors and swap it in atomically.
    On any failure the old file stays as it was."""
    ids, X = vectors.store_for(client_id, backbone).all()
    if not len(ids):
        return None
    index = VectorIndex.build(ids, X)
    with _lock:
        index.save(index_path(client_id, backbone))
    return index


def get_index(client_id: int, backbone: str | None = None) -> VectorIndex | None:
    """The client's index, with vectors stored since the last build added (and saved)."""
    path = index_path(client_id, backbone)
    store = vectors.store_for(client_id, backbone)
    if not path.exists():
        return rebuild(client_id, backbone)
    mtime = path.stat().st_mtime_ns
    index = _load(str(path), mtime)
    key = (mtime, store.version())
    if _in_sync.get(str(path)) == key:  # nothing stored or rebuilt since the last full check
        return index
    stored = store.ids()
    if len(stored) != index.ntotal or not np.isin(stored, index.ids()).all():
        missing = np.setdiff1d(stored, index.ids())
        if len(missing) and len(missing) + index.ntotal == len(stored):
            found, X = store.get(missing)
            fresh = VectorIndex.load(str(path))  # the cached object is shared: never mutate it
            fresh.add(found, X)
            with _lock:
                fresh.save(path)
            return fresh  # the next read checks the saved file once (another process may race)
        return rebuild(client_id, backbone)  # ids vanished or changed: start over
    _in_sync[str(path)] = key
    return index


def _search(client_id: int, q: np.ndarray, k: int) -> list[tuple[int, float]]:
    index = get_index(client_id)
    if index is None:
        return []
    sims, ids = index.search(q, k)
    return [(int(i), float(s)) for i, s in zip(ids[0], sims[0]) if i >= 0]


def neighbours(taxonomy: Taxonomy, asset_id: int, k: int = 24, filter: str = "all",
               tag_id: int | None = None) -> list[dict]:
    """Nearest assets of the taxonomy's client to ``asset_id`` (itself excluded), best first."""
    found, X = vectors.vectors_for(taxonomy.client_id, [asset_id])
    if not len(found):
        return []
    return _neighbour_rows(taxonomy, X[0], k, filter, tag_id, exclude={int(asset_id)})


def search_image(taxonomy: Taxonomy, image: BinaryIO, k: int = 24, filter: str = "all",
                 tag_id: int | None = None) -> list[dict]:
    """Nearest assets to an uploaded image. The image is embedded in memory and never stored."""
    from ml.preprocess import load_rgb

    q = vectors.get_embedder().embed_images([load_rgb(image)])
    return _neighbour_rows(taxonomy, q[0], k, filter, tag_id, exclude=set())


def _neighbour_rows(taxonomy: Taxonomy, q: np.ndarray, k: int, filter: str, tag_id: int | None,
                    exclude: set[int]) -> list[dict]:
    if filter not in FILTERS:
        raise ValueError(f"filter: one of {', '.join(FILTERS)}")
    fetch = k + len(exclude) if filter == "all" else k * OVERFETCH
    hits = [(a, s) for a, s in _search(taxonomy.client_id, q[None, :], fetch) if a not in exclude]
    rows = describe(taxonomy, [a for a, _ in hits])
    out = []
    for asset_id, sim in hits:
        row = rows.get(asset_id)
        if row is None or not _keep(row, filter, tag_id):
            continue
        out.append({**row, "similarity": round(sim, 4)})
        if len(out) == k:
            break
    return out


def _keep(row: dict, filter: str, tag_id: int | None) -> bool:
    if filter == "labeled":
        return row["label"] is not None
    if filter == "unlabeled":
        return row["label"] is None
    if filter == "tag":
        return tag_id in (row["label"] or []) or (row["label"] is None and row["suggested"] == tag_id)
    return True


def describe(taxonomy: Taxonomy, asset_ids: list[int]) -> dict[int, dict]:
    """Tile data for assets of the taxonomy's client: name, thumbnail, current label tag ids,
    live suggestion (top-1 tag, probability, uncertainty; no tag when that tag was retired).
    Other clients' ids are dropped."""
    from .queue import _asset_urls

    assets = Asset.objects.filter(client_id=taxonomy.client_id, pk__in=asset_ids).values_list("pk", "original_name")
    out = {pk: {"asset": pk, "name": name, "label": None, "suggested": None, "prob": None,
                "uncertainty": None, **_asset_urls(pk)} for pk, name in assets}
    for asset_id, tag_id in Label.objects.filter(
        taxonomy=taxonomy, is_current=True, asset_id__in=list(out)
    ).values_list("asset_id", "tags"):
        row = out[asset_id]
        row["label"] = sorted((row["label"] or []) + ([tag_id] if tag_id else []))
    if taxonomy.live_model_id:
        retired = set(taxonomy.tags.filter(retired=True).values_list("pk", flat=True))
        for asset_id, top, prob, unc in Suggestion.objects.filter(
            model_version_id=taxonomy.live_model_id, asset_id__in=list(out)
        ).values_list("asset_id", "top1_tag_id", "top1_prob", "uncertainty"):
            if top in retired:  # retired since the model was trained: not offered until it is retrained
                top, prob = None, None
            out[asset_id].update(suggested=top, prob=None if prob is None else round(prob, 4),
                                 uncertainty=round(unc, 4))
    return out


# -- second look --------------------------------------------------------------------------
SECOND_LOOK_CHUNK = 4  # candidates checked per row asked for, per round of queries


def _second_look_path(taxonomy: Taxonomy) -> Path:
    # Next to the vectors it is computed from: per client and backbone, gone with them.
    return vectors.store_for(taxonomy.client_id).root / f"second_look-{taxonomy.pk}.npz"


def _second_look_key(taxonomy: Taxonomy, tag_ids: list[int]) -> str:
    """What the scores depend on: the stored vectors, the active tags and the set of labels.
    The count of current labels changes with every new label or undo but not with a "keep"
    or a correction (a re-save); rows whose label changed since are dropped when read."""
    n_labels = Label.objects.filter(taxonomy=taxonomy, is_current=True).count()
    store = "\n".join(vectors.store_for(taxonomy.client_id).version())
    return hashlib.sha1(f"{store}|{tag_ids}|{n_labels}".encode()).hexdigest()


def _given_labels(taxonomy: Taxonomy, col: dict[int, int], asset_ids: list[int] | None = None) -> dict[int, int]:
    """asset id -> the tag its current label is compared by (multi-label: its first active tag)."""
    rows = Label.objects.filter(taxonomy=taxonomy, is_current=True)
    if asset_ids is not None:
        rows = rows.filter(asset_id__in=asset_ids)
    given: dict[int, int] = {}
    for asset_id, tag_id in rows.values_list("asset_id", "tags").order_by("asset_id", "tags"):
        if tag_id in col:
            given.setdefault(asset_id, tag_id)
    return given


SUSPICION_FIELDS = ("ids", "given", "scores", "alt", "alt_prob", "knn")


def _suspicion(taxonomy: Taxonomy, tag_ids: list[int]) -> dict[str, np.ndarray]:
    """Per labeled asset, most suspicious first: ids, given tag ids, scores, and why -- the
    check model's most likely other tag (``alt``, out-of-fold) with its probability, and the
    share of near neighbours labeled otherwise (``knn``; NaN: unknown). Cached in a file:
    the cross-validated heads and the exact kNN cost seconds at a few thousand labels and grow
    quadratically, so only the first page load after the labels change pays it."""
    from ml.noise import suspicion_components

    key = _second_look_key(taxonomy, tag_ids)
    path = _second_look_path(taxonomy)
    try:
        with np.load(path) as f:
            if str(f["key"]) == key:
                return {name: f[name] for name in SUSPICION_FIELDS}
    except (OSError, ValueError, KeyError):
        pass  # none yet, unreadable, or written before a field existed: compute it again
    col = {t: i for i, t in enumerate(tag_ids)}
    given = _given_labels(taxonomy, col)
    found, X = vectors.vectors_for(taxonomy.client_id, list(given))
    out = {name: np.zeros(0, np.float64) for name in SUSPICION_FIELDS}
    if len(found) >= 4 and len({given[int(a)] for a in found}) >= 2:  # else nothing to compare a label with
        y = np.array([col[given[int(a)]] for a in found], dtype=np.int64)
        parts = suspicion_components(X, y, len(tag_ids), k_folds=min(5, len(found)),
                                     n_neighbors=min(10, len(found) - 1))
        others = np.where(np.eye(len(tag_ids), dtype=bool)[y], -1.0, np.nan_to_num(parts["oof_proba"], nan=-1.0))
        alt = others.argmax(axis=1)
        order = np.argsort(-parts["score"], kind="stable")
        out = {
            "ids": np.asarray(found, np.int64)[order], "given": np.asarray(tag_ids, np.int64)[y[order]],
            "scores": parts["score"][order], "alt": np.asarray(tag_ids, np.int64)[alt[order]],
            "alt_prob": others[np.arange(len(y)), alt][order], "knn": parts["knn_disagreement"][order],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, fsync=False) as f:  # recomputable; readers see old or new, never half
        np.savez(f, key=np.array(key), **out)
    return out


def second_look(taxonomy: Taxonomy, limit: int = 50) -> list[dict]:
    """Current labels that the model (out-of-fold) and the neighbours disagree with, most
    suspicious first (ml.noise.suspicion_scores). Labels confirmed with "keep" (a re-save of
    the same tags, whose event has before == after) and labels changed since the scores were
    computed are left out. Single-label taxonomies use their one tag; multi-label ones their
    first tag."""
    from ..models import LabelEvent

    tag_ids = list(taxonomy.active_tags().values_list("id", flat=True))
    why = _suspicion(taxonomy, tag_ids)
    ids, given = why["ids"], why["given"]
    col = {t: i for i, t in enumerate(tag_ids)}
    picked: list[int] = []
    step = max(limit * SECOND_LOOK_CHUNK, 1)
    for start in range(0, len(ids), step):  # usually one round: a few rows were kept or changed
        chunk = [int(a) for a in ids[start : start + step]]
        now = _given_labels(taxonomy, col, chunk)
        kept = {
            e.asset_id for e in LabelEvent.objects.filter(
                taxonomy=taxonomy, action=LabelEvent.Action.SET, label__is_current=True, asset_id__in=chunk
            ).only("asset_id", "before", "after")
            if e.before is not None and e.before == e.after
        }
        picked += [i for i in range(start, start + len(chunk))
                   if now.get(int(ids[i])) == int(given[i]) and int(ids[i]) not in kept]
        if len(picked) >= limit:
            break
    picked = picked[:limit]
    rows = describe(taxonomy, [int(ids[i]) for i in picked])
    return [
        {**rows[int(ids[i])], "given": int(given[i]), "score": round(float(why["scores"][i]), 4),
         "alt": int(why["alt"][i]), "alt_prob": _share(why["alt_prob"][i]), "knn": _share(why["knn"][i])}
        for i in picked if int(ids[i]) in rows
    ]


def _share(value: float) -> float | None:
    """A probability or share as the page shows it; None where there was no evidence."""
    return None if not np.isfinite(value) or value < 0 else round(float(value), 3)
