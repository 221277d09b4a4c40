"""More like this: one FAISS index per client and backbone over the vector store.

The index file lives at TAGLOOP_VECTOR_DIR/<client>/<backbone>/index.faiss, next to the
client's vectors, so another client's assets can never be in it. A new backbone gets its own
file (the old one stays until it is removed), and ``rebuild`` writes aside and swaps
atomically. Assets embedded after the last build are added on the next read, so an import
never waits for an index rebuild.
"""
from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
from django.conf import settings

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
    live suggestion (top-1 tag, probability, uncertainty; no tag when that tag was retired;
    ``suggested_tags``: what accepting it saves, the top tag or, multi-label, the tags over their
    thresholds). Other clients' ids are dropped."""
    from .queue import asset_urls

    assets = Asset.objects.filter(client_id=taxonomy.client_id, pk__in=asset_ids).values_list("pk", "original_name")
    out = {pk: {"asset": pk, "name": name, "label": None, "suggested": None, "prob": None,
                "uncertainty": None, "suggested_tags": [], **asset_urls(pk)} for pk, name in assets}
    for asset_id, tag_id in Label.objects.filter(
        taxonomy=taxonomy, is_current=True, asset_id__in=list(out)
    ).values_list("asset_id", "tags"):
        row = out[asset_id]
        row["label"] = sorted((row["label"] or []) + ([tag_id] if tag_id else []))
    if taxonomy.live_model_id and taxonomy.multilabel:
        _suggested_sets(taxonomy, out)
    elif taxonomy.live_model_id:
        retired = set(taxonomy.tags.filter(retired=True).values_list("pk", flat=True))
        for asset_id, top, prob, unc in Suggestion.objects.filter(
            model_version_id=taxonomy.live_model_id, asset_id__in=list(out)
        ).values_list("asset_id", "top1_tag_id", "top1_prob", "uncertainty"):
            if top in retired:  # retired since the model was trained: not offered until it is retrained
                top, prob = None, None
            out[asset_id].update(suggested=top, prob=None if prob is None else round(prob, 4),
                                 uncertainty=round(unc, 4), suggested_tags=[] if top is None else [top])
    return out


def _suggested_sets(taxonomy: Taxonomy, out: dict[int, dict]) -> None:
    """Multi-label: what accepting a tile saves is every tag over its threshold, not the top
    one, so that is what the tile must show (with no single probability)."""
    from .labels import live_suggestions, retired_tag_ids, suggested_tag_ids

    retired = retired_tag_ids(taxonomy)
    for asset_id, s in live_suggestions(taxonomy, list(out)).items():
        top = s.top1_tag_id if s.top1_tag_id not in retired else None
        out[asset_id].update(suggested=top, prob=None, uncertainty=round(s.uncertainty, 4),
                             suggested_tags=sorted(suggested_tag_ids(taxonomy, s, retired)))
