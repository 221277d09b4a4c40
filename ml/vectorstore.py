"""Append-only vector store: float16 shards on disk with an id map, loaded by memory map.

Vectors stay out of the relational database: 1M x 1280 float16 is 2.5 GB, which a
database would copy around on every read, while a memory-mapped file costs nothing until
touched. Each ``add`` writes a new shard (vectors first, then ids, each by atomic rename);
a reader only trusts shards whose ids file exists, so it never sees a half-written one.
When an id appears in several shards the newest shard wins.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np

COMPACT_AFTER = 64  # shards; merging keeps open() cheap for libraries imported in many batches


class VectorStore:
    def __init__(self, root: Path | str, dim: int | None = None):
        """``dim`` may be left out for reading: it is then taken from the stored shards."""
        self.root = Path(root)
        self.dim = int(dim) if dim else self._stored_dim()
        self._cache_key: tuple | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._vecs = np.zeros((0, self.dim or 0), dtype=np.float16)
        self._row: dict[int, int] = {}

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
        self.root.mkdir(parents=True, exist_ok=True)
        # Time-ordered unique names: concurrent writers never collide, and sort order = age.
        stem = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._atomic_save(self.root / f"{stem}.vec.npy", vectors.astype(np.float16))
        self._atomic_save(self.root / f"{stem}.ids.npy", ids)
        if len(self._shards()) > COMPACT_AFTER:
            self.compact()

    def compact(self) -> None:
        """Merge all shards into one. Old shards are removed only after the merged one exists."""
        old = self._shards()
        if len(old) <= 1:
            return
        ids, vecs = self._load(old)
        stem = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._atomic_save(self.root / f"{stem}.vec.npy", vecs)
        self._atomic_save(self.root / f"{stem}.ids.npy", ids)
        for s in old:
            for suffix in (".ids.npy", ".vec.npy"):  # ids first: the shard stops counting at once
                (self.root / f"{s}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _atomic_save(path: Path, array: np.ndarray) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

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

    def _load(self, shards: list[str]) -> tuple[np.ndarray, np.ndarray]:
        id_parts, vec_parts = [], []
        for s in shards:
            try:
                id_parts.append(np.load(self.root / f"{s}.ids.npy", allow_pickle=False))
                vec_parts.append(np.load(self.root / f"{s}.vec.npy", mmap_mode="r", allow_pickle=False))
            except FileNotFoundError:  # compacted away between listing and loading
                continue
        if not id_parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float16)
        ids = np.concatenate(id_parts)
        vecs = np.concatenate(vec_parts) if len(vec_parts) > 1 else np.asarray(vec_parts[0])
        # Newest wins: keep the last occurrence of each id.
        _, last_from_end = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last_from_end)
        if len(keep) != len(ids):
            ids, vecs = ids[keep], vecs[keep]
        return ids, vecs

    def _refresh(self) -> None:
        shards = self._shards()
        key = tuple(shards)
        if key == self._cache_key:
            return
        self._ids, self._vecs = self._load(shards)
        self._row = {int(i): r for r, i in enumerate(self._ids)}
        self._cache_key = key

    def ids(self) -> np.ndarray:
        self._refresh()
        return self._ids.copy()

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        self._refresh()
        return self._ids.copy(), np.asarray(self._vecs, dtype=np.float32)

    def get(self, ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the ids that are present, in the order asked; missing ids are dropped."""
        self._refresh()
        rows = [(int(i), self._row[int(i)]) for i in ids if int(i) in self._row]
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        found = np.array([i for i, _ in rows], dtype=np.int64)
        vecs = np.asarray(self._vecs[[r for _, r in rows]], dtype=np.float32)
        return found, vecs

    def __contains__(self, asset_id: int) -> bool:
        self._refresh()
        return int(asset_id) in self._row

    def __len__(self) -> int:
        self._refresh()
        return len(self._ids)
