"""Near-identical images: groups of a client's assets that are the same picture.

Byte-identical files never get here: the import stores each sha256 once per client. What is
left are re-encodings, resizes and light crops of one photo. Two signals, measured:

- Embedding cosine >= ``NEAR_DUP_COSINE``, measured on FlickrLogos-27's 1,079 images (Lite0,
  every pair, the top 45 pairs inspected by eye): the 18 pairs at cosine >= 0.97 are all the
  same picture (re-encoded, resized, bordered or re-cropped; lowest 0.9707), while the most
  similar different pictures (another rendering of the same logo: BMW, Vodafone) reach 0.958.
  0.965 sits in that gap. It catches crops, but not recompression of small photos.
- Perceptual hash (ml.phash) within ``PHASH_MAX_BITS`` for pairs that are also embedding
  neighbours at cosine >= ``PHASH_MIN_COSINE`` (the rule: ``ml.phash.is_near_duplicate``).
  ``bench/duplicates.py``, 150 shoe / FlickrLogos photos: shrunk to 75 % and saved at quality
  70, cosine alone finds 14 copies, with the hash 146; shrunk to 50 % at quality 60: 1 vs 97;
  a 90 % crop: 1 vs 12 (pHash is not crop-robust). Among the 1,891 distinct dataset files the
  hash adds 16 pairs to the cosine rule's 16; the ones inspected were the same shoe photo
  twice or one logo artwork at another size.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ml.index import VectorIndex
from ml.phash import NEAR_DUP_COSINE, PHASH_MAX_BITS, PHASH_MIN_COSINE, hamming, is_near_duplicate, phash

from ..models import Asset, Label, Taxonomy
from . import similarity, vectors

__all__ = ["NEAR_DUP_COSINE", "PHASH_MAX_BITS", "PHASH_MIN_COSINE", "groups", "groups_among", "offer"]
_THUMBS = Asset._meta.get_field("thumbnail").storage
NEIGHBOURS = 16  # per asset: a group larger than this is found through its members' neighbours


def groups(client_id: int) -> list[list[int]]:
    """Asset-id groups (each of 2+ assets, sorted), largest first, joined transitively."""
    index = similarity.get_index(client_id)
    if index is None:
        return []
    ids, X = vectors.store_for(client_id).all()
    sims, hits = index.search(X, min(NEIGHBOURS, len(ids)))
    root = _join(ids, sims, hits, lambda want: _phashes(client_id, want))
    by_root: dict[int, list[int]] = {}
    for a, r in root.items():
        by_root.setdefault(r, []).append(a)
    out = [sorted(g) for g in by_root.values() if len(g) > 1]
    return sorted(out, key=lambda g: (-len(g), g[0]))


def groups_among(client_id: int, asset_ids: Sequence[int]) -> np.ndarray:
    """For each of ``asset_ids``, the lowest asset id of its near-duplicates among these assets
    only (itself when it has none, or no vector). The rule of ``groups``, but searched over
    these assets' vectors alone (the labeled ones of a retrain, where ``groups`` searches the
    whole library; an exact search of n x n: 0.2 s at 2k x 1280, 4 s at 10k on 2 CPU cores),
    and on the hashes already stored: none is computed here, a missing one leaves the cosine
    rule (services.training_data keeps each group on one side of the held-out split)."""
    asked = np.asarray(asset_ids, dtype=np.int64)
    found, X = vectors.vectors_for(client_id, asked.tolist())
    root: dict[int, int] = {}
    if len(found) > 1:
        sims, hits = VectorIndex.build(found, X, kind="flat").search(X, min(NEIGHBOURS, len(found)))
        root = _join(found, sims, hits, lambda want: _phashes(client_id, want, backfill=False))
    return np.array([root.get(a, a) for a in asked.tolist()], dtype=np.int64)


def _join(ids: np.ndarray, sims: np.ndarray, hits: np.ndarray,
          hashes: Callable[[set[int]], dict[int, int]]) -> dict[int, int]:
    """Union-find over each asset's neighbours (``hits``: asset ids, -1 for none, ``sims``
    their cosines): asset id -> the lowest asset id of its group, joined transitively.
    ``hashes`` gives the pHashes of the assets asked (only pairs below the cosine threshold
    need them)."""
    parent = {int(a): int(a) for a in ids}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    pairs = [(a, int(b), s) for a, row_s, row_i in zip(ids.tolist(), sims, hits)
             for s, b in zip(row_s.tolist(), row_i.tolist())
             if b >= 0 and b != a and s >= PHASH_MIN_COSINE and b in parent]
    # hashes matter only below the cosine threshold: fetch (or backfill) just those
    known = hashes({x for a, b, s in pairs if s < NEAR_DUP_COSINE for x in (a, b)})
    for a, b, s in pairs:
        bits = hamming(known[a], known[b]) if a in known and b in known else None
        if is_near_duplicate(s, bits):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the lowest id roots the group
    return {a: find(a) for a in parent}


def _phashes(client_id: int, asset_ids: set[int], backfill: bool = True) -> dict[int, int]:
    """Stored hashes of these assets; with ``backfill``, assets imported before hashes existed
    get theirs from the thumbnail now (and keep it). An unreadable thumbnail just means no hash."""
    rows = Asset.objects.filter(client_id=client_id, pk__in=list(asset_ids)).values_list("pk", "phash", "thumbnail")
    out, made = {}, []
    for pk, h, thumb in rows:
        if h is None and thumb and backfill:
            try:
                with _THUMBS.open(thumb) as f, Image.open(f) as img:
                    h = phash(img)
            except (OSError, ValueError):
                continue
            made.append(Asset(pk=pk, phash=h))
        if h is not None:
            out[pk] = h
    Asset.objects.bulk_update(made, ["phash"], batch_size=1000)
    return out


def offer(taxonomy: Taxonomy, group: list[int]) -> dict | None:
    """What a group's "label the rest" button applies: the tags of its labeled members when
    they agree, and the members that do not carry them yet. None when nothing to offer."""
    current = {}
    for asset_id, tag_id in Label.objects.filter(taxonomy=taxonomy, is_current=True, asset_id__in=group).values_list(
        "asset_id", "tags"
    ):
        current.setdefault(asset_id, set()).add(tag_id)
    distinct = {frozenset(t) for t in current.values()}
    if len(distinct) != 1:
        return None  # nothing labeled yet, or the labeled members disagree: a human decides
    tags = sorted(next(iter(distinct)))
    rest = [a for a in group if a not in current]
    return {"tags": tags, "assets": rest} if rest else None

