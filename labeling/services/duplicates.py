"""Near-identical images: groups of a client's assets whose embeddings are almost the same.

Byte-identical files never get here: the import stores each sha256 once per client. What is
left are re-encodings, resizes and light crops of one photo. ``NEAR_DUP_COSINE`` was measured
on FlickrLogos-27's 1,079 images (Lite0 embeddings, every pair, the top 45 pairs inspected by
eye): the 18 pairs at cosine >= 0.97 are all the same picture (re-encoded, resized, bordered
or re-cropped; lowest 0.9707), while the most similar different pictures (another rendering
of the same logo: BMW, Vodafone) reach 0.958. 0.965 sits in that gap. Heavy recompression of
a small photo falls below it (a 240 px shoe downscaled to 180 px at JPEG quality 70: 0.82;
re-saved at quality 90: 0.986, upscaled 2x: 0.99), so such copies are left to "more like this".
"""
from __future__ import annotations

from ..models import Label, Taxonomy
from . import similarity, vectors

NEAR_DUP_COSINE = 0.965
NEIGHBOURS = 16  # per asset: a group larger than this is found through its members' neighbours


def groups(client_id: int, threshold: float = NEAR_DUP_COSINE) -> list[list[int]]:
    """Asset-id groups (each of 2+ assets, sorted), largest first, joined transitively."""
    index = similarity.get_index(client_id)
    if index is None:
        return []
    ids, X = vectors.store_for(client_id).all()
    sims, hits = index.search(X, min(NEIGHBOURS, len(ids)))
    parent = {int(a): int(a) for a in ids}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, row_s, row_i in zip(ids.tolist(), sims, hits):
        for s, b in zip(row_s.tolist(), row_i.tolist()):
            if b >= 0 and b != a and s >= threshold and b in parent:
                ra, rb = find(a), find(int(b))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    by_root: dict[int, list[int]] = {}
    for a in parent:
        by_root.setdefault(find(a), []).append(a)
    out = [sorted(g) for g in by_root.values() if len(g) > 1]
    return sorted(out, key=lambda g: (-len(g), g[0]))


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

