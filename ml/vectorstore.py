"""Append-only vector store: float16 shards on disk with an id map, loaded by memory map.

Vectors stay out of the relational database: 1M x 1280 float16 is 2.5 GB, which a
database would copy around on every read, while a memory-mapped file costs nothing until
touched. Each ``add`` writes a new shard (vectors first, then ids, each by atomic rename);
a reader only trusts shards whose ids file exists, so it never sees a half-written one.
When an id appears in several shards the newest shard wins.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from ml.atomic import atomic_write

COMPACT_AFTER = 64  # shards; merging keeps open() cheap for libraries imported in many batches


def _compacted_stem(newest: str) -> str:
    """Name for a merged shard that sorts right after ``newest``, the newest shard it merged.

    A fresh timestamp would sort after any shard a concurrent ``add`` wrote during the merge,
    so "newest wins" would serve the merged (stale) vector over the one written meanwhile.
    Names are ``shard-<ns>-<hex>`` or ``shard-<ns>-<hex>-z<generation>-<hex>``; 'z' is never in
    hex, and the generation keeps a re-merge sorting after the merge it absorbs while the name
    stays the same length however often the store is compacted.
    """
    parts = newest.split("-")
    generation = int(parts[3][1:]) + 1 if len(parts) > 3 else 1
    return f"{'-'.join(parts[:3])}-z{generation:06d}-{uuid.uuid4().hex[:8]}"


class VectorStore:
    def __init__(self, root: Path | str, dim: int | None = None):
        """``dim`` may be left out for reading: it is then taken from the stored shards."""
        self.root = Path(root)
        self.dim = int(dim) if dim else self._stored_dim()
        self._cache_key: tuple | None = None

    # -- writing -----------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors)
        if not self.dim and vectors.ndim == 2:
            self.dim = vectors.shape[1]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors: expected shape (n, {self.dim}), got {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError(f"ids: {len(ids)} ids for {len(vectors)} vectors")
        if not len(ids):
            return
        if not np.isfinite(vectors).all():
            raise ValueError("vectors: contain NaN or infinity")
        # Checked after the cast too: float16 turns |v| > 65504 into inf without an error, and one
        # inf row later breaks training (L-BFGS overflow) and cosine search (NaN after normalising).
        with np.errstate(over="ignore"):  # reported below as a ValueError instead
            stored = vectors.astype(np.float16)
        bad = ~np.isfinite(stored).all(axis=1)
        if bad.any():
            raise ValueError(f"vectors: values beyond float16's range (|v| > 65504) for ids "
                             f"{ids[bad][:10].tolist()}")
        self.root.mkdir(parents=True, exist_ok=True)
        # Time-ordered unique names: concurrent writers never collide, and sort order = age.
        stem = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._atomic_save(self.root / f"{stem}.vec.npy", stored)
        self._atomic_save(self.root / f"{stem}.ids.npy", ids)
        if len(self._shards()) > COMPACT_AFTER:
            self.compact()

    def compact(self) -> None:
        """Merge all shards into one. Old shards are removed only after the merged one exists."""
        old = self._shards()
        if len(old) <= 1:
            return
        self._cache_key = None  # re-read: the merge covers at least the shards listed above
        self._refresh()
        if not self._cache_key:  # another process compacted everything away meanwhile
            return
        ids, vecs = self._ids.copy(), self._gather(self._rows).astype(np.float16)  # stored as float16
        stem = _compacted_stem(self._cache_key[-1])
        self._atomic_save(self.root / f"{stem}.vec.npy", vecs)
        self._atomic_save(self.root / f"{stem}.ids.npy", ids)
        for s in old:
            for suffix in (".ids.npy", ".vec.npy"):  # ids first: the shard stops counting at once
                (self.root / f"{s}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _atomic_save(path: Path, array: np.ndarray) -> None:
        with atomic_write(path) as f:
            np.save(f, array, allow_pickle=False)

    # -- reading -----------------------------------------------------------------------
    def _stored_dim(self) -> int:
        for s in self._shards():
            try:
                return int(np.load(self.root / f"{s}.vec.npy", mmap_mode="r").shape[1])
            except FileNotFoundError:
                continue
        return 0

    def _shards(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name[: -len(".ids.npy")] for p in self.root.glob("shard-*.ids.npy"))

    def _refresh(self) -> None:
        """Re-read the id files when the shard list changed. Vectors stay memory-mapped: only
        the rows a caller asks for are ever read, so listing ids or looking one up is cheap
        even for a million vectors."""
        shards = self._shards()
        key = tuple(shards)
        if key == self._cache_key:
            return
        id_parts, vec_parts = [], []
        for s in shards:
            try:
                ids = np.load(self.root / f"{s}.ids.npy", allow_pickle=False)
                vecs = np.load(self.root / f"{s}.vec.npy", mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:  # compacted away between listing and loading
                continue
            id_parts.append(ids)
            vec_parts.append(vecs)
        all_ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)
        # Newest wins: keep the last occurrence of each id (rows index the shards end to end).
        _, last_from_end = np.unique(all_ids[::-1], return_index=True)
        self._rows = np.sort(len(all_ids) - 1 - last_from_end)
        self._ids = all_ids[self._rows]
        self._parts = vec_parts
        self._offsets = np.cumsum([0] + [len(p) for p in id_parts])
        self._order = np.argsort(self._ids, kind="stable")
        self._sorted_ids = self._ids[self._order]
        if vec_parts and not self.dim:
            self.dim = int(vec_parts[0].shape[1])
        self._cache_key = key

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of global rows, read shard by shard from the memory maps."""
        out = np.empty((len(rows), self.dim or 0), dtype=np.float32)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self._parts[s][rows[mask] - self._offsets[s]]
        return out

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Index into self._ids of each id, -1 where absent."""
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, max(len(self._sorted_ids) - 1, 0))
        hit = len(self._sorted_ids) > 0
        found = (self._sorted_ids[pos] == ids) if hit else np.zeros(len(ids), dtype=bool)
        return np.where(found, self._order[pos] if hit else -1, -1)

    def version(self) -> tuple[str, ...]:
        """Changes whenever vectors are added or compacted (shard names are never reused):
        a cheap key for "is what I derived from this store still current?"."""
        return tuple(self._shards())

    def ids(self) -> np.ndarray:
        self._refresh()
        return self._ids.copy()

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        self._refresh()
        return self._ids.copy(), self._gather(self._rows)

    def get(self, ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the ids that are present, in the order asked; missing ids are dropped."""
        self._refresh()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = self._positions(ids)
        keep = pos >= 0
        return ids[keep], self._gather(self._rows[pos[keep]])

    def __contains__(self, asset_id: int) -> bool:
        self._refresh()
        return bool(self._positions(np.array([int(asset_id)], dtype=np.int64))[0] >= 0)

    def __len__(self) -> int:
        self._refresh()
        return len(self._ids)
