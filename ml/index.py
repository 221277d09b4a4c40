"""A FAISS nearest-neighbour index over embeddings: cosine similarity as inner product of
L2-normalised vectors, keyed by asset id.

Exact (``IndexFlatIP``) while a library is small, inverted lists with float16 codes
(``IndexIVFScalarQuantizer``) past ``FLAT_MAX``: at 1M x 1280 a flat scan reads 5 GB per
query (hundreds of ms), while IVF reads ``nprobe / nlist`` of half that. ``FLAT_MAX``,
``nlist`` and ``DEFAULT_NPROBE`` come from ``bench/index.py`` on a 2-core CPU (see the
README): flat search stays under ~5 ms up to ~20k vectors, and IVF with nprobe=32 keeps
recall@20 >= 0.9 on clustered data.

The same code runs on a GPU when ``faiss.get_num_gpus() > 0`` (faiss-gpu installed): the
index is cloned to the device for adding and searching and back to the host for saving.

Files are replaced atomically: ``save`` writes a temporary file in the same folder, fsyncs
and ``os.replace``s it, so a reader opens either the old index or the new one, never half a
file, and an index already loaded keeps working while a rebuild happens.
"""
from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

FLAT_MAX = 20_000  # vectors; above this, IVF (bench/index.py: flat p95 passes ~5 ms here)
DEFAULT_NPROBE = 32  # lists scanned per query; bench: recall@20 >= 0.9 at 1M
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per list
TRAIN_MAX = 100_000  # training sample for the coarse quantizer: more adds time, not recall
TRAIN_NITER = 10  # coarse k-means iterations; faiss' default 25 costs 2.5x for no recall here


def normalise(X: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (zero rows stay zero): inner product = cosine."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    if np.allclose(norms, 1.0, atol=1e-4):
        return X  # already unit rows: no 5 GB copy at 1M x 1280
    return X / np.where(norms > 0, norms, 1.0)


def use_gpu() -> bool:
    return faiss.get_num_gpus() > 0


def choose_nlist(n: int) -> int:
    """~2 sqrt(n) lists (faiss suggests 1-16 sqrt(n); the low end keeps training affordable on a
    2-core CPU: 2,000 lists at 1M), capped so each list gets enough training points."""
    return int(max(1, min(2 * math.sqrt(max(n, 1)), n // MIN_POINTS_PER_LIST, 65_536)))


class VectorIndex:
    """Cosine kNN over (id, vector) pairs. Build with ``VectorIndex.build``, open with ``load``."""

    def __init__(self, index: faiss.Index, kind: str):
        self.kind = kind  # "flat" | "ivf"
        self._host = index
        self._device = _to_device(index)
        self.nprobe = DEFAULT_NPROBE

    # -- building ----------------------------------------------------------------------
    @classmethod
    def build(cls, ids: np.ndarray, X: np.ndarray, kind: str = "auto", nlist: int | None = None,
              seed: int = 0) -> "VectorIndex":
        """Index ``X`` (raw or normalised) under ``ids``. ``kind``: auto | flat | ivf."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        Xn = normalise(X)
        n, d = Xn.shape
        if kind == "auto":
            kind = "flat" if n <= FLAT_MAX else "ivf"
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        elif kind == "ivf":
            nlist = nlist or choose_nlist(n)
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            sample = Xn if n <= TRAIN_MAX else Xn[np.random.default_rng(seed).choice(n, TRAIN_MAX, replace=False)]
            index.cp.seed, index.cp.niter = seed, TRAIN_NITER
            trainer = _to_device(index)
            trainer.train(sample)
            index = _to_host(trainer) if trainer is not index else index
        else:
            raise ValueError(f"kind: 'auto', 'flat' or 'ivf', not {kind!r}")
        built = cls(index, kind)
        built.add(ids, Xn)
        return built

    def add(self, ids: np.ndarray, X: np.ndarray) -> None:
        """Add (or replace) vectors; an id already present is removed first."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return
        present = np.isin(ids, self.ids(), assume_unique=False) if self.ntotal else np.zeros(len(ids), bool)
        if present.any():
            self._host.remove_ids(faiss.IDSelectorBatch(ids[present]))
        self._host.add_with_ids(normalise(X), ids)
        self._device = _to_device(self._host)

    # -- querying ----------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self._host.ntotal)

    @property
    def dim(self) -> int:
        return int(self._host.d)

    def ids(self) -> np.ndarray:
        """Every indexed id (order unspecified)."""
        if self.kind == "flat":
            return faiss.vector_to_array(self._host.id_map).astype(np.int64)
        invlists = faiss.extract_index_ivf(self._host).invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(invlists.nlist) if invlists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def search(self, Q: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities (m, k) float32, ids (m, k) int64), best first; id -1 = no hit."""
        Q = normalise(np.atleast_2d(Q))
        k = max(1, min(int(k), max(self.ntotal, 1)))
        if self.kind == "ivf":
            _set_nprobe(self._device, nprobe or self.nprobe)
        sims, ids = self._device.search(Q, k)
        return sims, ids

    # -- files -------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        """Atomic: a concurrent reader sees the old file or the new one, never a partial one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            faiss.write_index(self._host, str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path | str) -> "VectorIndex":
        # Read fully into memory: the file may be replaced by a rebuild right after.
        index = faiss.read_index(str(path))
        kind = "flat" if isinstance(index, faiss.IndexIDMap) or "IDMap" in type(index).__name__ else "ivf"
        return cls(index, kind)


def _set_nprobe(index: faiss.Index, nprobe: int) -> None:
    try:
        faiss.extract_index_ivf(index).nprobe = int(nprobe)
    except Exception:  # GPU IVF indexes take it through the parameter space
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))


def _to_device(index: faiss.Index) -> faiss.Index:
    """The GPU clone of ``index`` when a GPU is present, else ``index`` itself."""
    if not use_gpu():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except Exception as exc:  # an index type without a GPU version: search on the CPU
        log.warning("FAISS index stays on the CPU: %s", exc)
        return index


def _to_host(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if use_gpu() else index
