"""Embedding assets once per backbone and keeping the vectors in the per-client store."""
from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import numpy as np

from django.conf import settings

from ml.vectorstore import VectorStore

from ..models import Asset

log = logging.getLogger(__name__)
BATCH = 256  # assets per embed call: bounds memory, gives progress


def get_embedder(backbone: str | None = None, runtime: str | None = None):
    """One embedder per process and setting: loading weights / the ONNX session costs a second
    or two."""
    return _embedder(backbone or settings.TAGLOOP_BACKBONE, settings.TAGLOOP_VIEWS,
                     runtime or settings.TAGLOOP_EMBED_RUNTIME, settings.TAGLOOP_CACHE_DIR / "onnx")


@functools.lru_cache(maxsize=4)
def _embedder(backbone: str, views: str, runtime: str, onnx_dir):
    from ml.multiview import make_embedder

    return make_embedder(backbone, views, runtime=runtime, cache_dir=onnx_dir)


def backbone_name() -> str:
    """Name of the current vectors: the backbone, plus the views when they are not the default
    centre crop ("efficientnet-lite0@center,flip+tiles2,tiles3.max"). Stores, caches and model
    rows are keyed by it, so a change of either re-embeds and never mixes vectors."""
    from ml.multiview import vector_key

    return vector_key(settings.TAGLOOP_BACKBONE, settings.TAGLOOP_VIEWS)


def store_for(client_id: int, backbone: str | None = None, dim: int | None = None) -> VectorStore:
    backbone = backbone or backbone_name()
    return VectorStore(settings.TAGLOOP_VECTOR_DIR / str(client_id) / backbone, dim)


def embed_assets(
    asset_ids: Sequence[int], progress: Callable[[int, int], None] | None = None
) -> dict:
    """Embed the given assets that have no vector for the current backbone yet.

    Idempotent: already embedded assets are skipped, so a retried task does no extra work.
    Returns {"embedded": n, "failed": {asset_id: message}}.
    """
    backbone = backbone_name()
    todo = list(
        Asset.objects.filter(pk__in=list(asset_ids))
        .exclude(embedded_with=backbone)
        .order_by("client_id", "id")
        .values_list("id", "client_id", "file", "sha256")
    )
    embedder = get_embedder()
    cache = content_cache(backbone)
    done, failed = 0, {}
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        keys = np.array([content_key(sha) for *_, sha in chunk], dtype=np.int64)
        hit_keys, hit_vecs = cache.get(keys)
        cached = dict(zip(hit_keys.tolist(), hit_vecs))
        misses = [i for i, k in enumerate(keys.tolist()) if k not in cached]
        if misses:
            result = embedder.embed_paths([settings.MEDIA_ROOT / chunk[i][2] for i in misses])
            for j, msg in result.errors.items():
                failed[chunk[misses[j]][0]] = msg
                log.warning("embedding failed for asset %s: %s", chunk[misses[j]][0], msg)
            new_keys = keys[[misses[j] for j in result.ok]]
            cache.add(new_keys, result.vectors)
            cached.update(zip(new_keys.tolist(), result.vectors))
        by_client: dict[int, list[int]] = {}
        for i, (asset_id, client_id, _, _) in enumerate(chunk):
            if int(keys[i]) in cached:
                by_client.setdefault(client_id, []).append(i)
        for client_id, rows in by_client.items():
            ids = [chunk[i][0] for i in rows]
            vecs = np.stack([cached[int(keys[i])] for i in rows])
            store_for(client_id, backbone).add(ids, vecs)
            Asset.objects.filter(pk__in=ids).update(embedded_with=backbone)
            done += len(ids)
        if progress:
            progress(min(start + BATCH, len(todo)), len(todo))
    return {"embedded": done, "failed": failed}


def content_key(sha256: str) -> int:
    """60 bits of the file's sha256 as a store id: same bytes, same vector, in any client."""
    return int(sha256[:15], 16)


def content_cache(backbone: str) -> VectorStore:
    """Vectors by file content, shared by all clients: re-importing bytes already seen (the same
    photo in two clients, a re-upload after deletion) costs no CNN pass. It holds only vectors,
    never anything a client could read back."""
    return VectorStore(settings.TAGLOOP_CACHE_DIR / "vectors" / backbone)


def embedded_elsewhere(client_id: int) -> list[int]:
    """Assets of the client whose vector is another backbone's (TAGLOOP_BACKBONE changed since):
    a model of the current backbone cannot score them until they are embedded again. Assets
    that never got a vector ("") are left out: their files already failed to embed."""
    return list(
        Asset.objects.filter(client_id=client_id)
        .exclude(embedded_with__in=["", backbone_name()])
        .values_list("id", flat=True)
    )


def vectors_for(client_id: int, asset_ids: Sequence[int]):
    """(found_ids, float32 vectors) for assets of one client under the current backbone."""
    return store_for(client_id).get(list(asset_ids))
