"""Local-feature evidence in the product (ml.localmatch): SIFT keypoints of each asset matched
against labeled assets, the matches that one similarity transform verifies added to a model
version's probabilities. Opt-in per taxonomy (``Taxonomy.local_matching``): on FlickrLogos
it took the default features from 73 % to 84 % (docs/ml-results.md, round 8) at about 3x the
CNN's CPU time per image, and it adds nothing to tags without a rigid pattern (scenes).

- Keypoints are cached by file content under TAGLOOP_CACHE_DIR/keypoints (~260 KB per image),
  extracted the first time an asset is scored or used as a template.
- A retrain (services.training) builds the index of its training labels (the newest
  TEMPLATES_PER_TAG per tag, MAX_TEMPLATES in all), picks the fusion weight on those labels
  (leave-one-out matches + the head's out-of-fold probabilities; 0 when matching misleads)
  and saves both next to the head as ``<artifact>.local.npz``.
- Scoring (services.suggesting) and the predict API fuse with the version's own index. A
  labeled asset is scored leave-one-out, so its own label never vouches for itself (second
  look and noise checks read those probabilities).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from django.conf import settings

from ml.atomic import atomic_write
from ml.local_evidence import choose_templates, fit_weight, scores_of
from ml.localmatch import Keypoints, MatchIndex, empty, extract, fuse, load_or_extract, read_gray

from ..models import Asset, ModelVersion, Taxonomy

log = logging.getLogger(__name__)

LOAD_BATCH = 32  # assets per keypoint load / extraction round
SCORE_CHUNK = 2000  # assets per scoring round while matching (~20 ms each): the run's heartbeat
CACHED_VERSIONS = 2  # indexes kept per process (the live model and the one being scored)


def enabled(taxonomy: Taxonomy) -> bool:
    """Multi-label taxonomies are left out: a template photo carries several tags, and which of
    them its matched pattern shows is unknown."""
    return taxonomy.local_matching and not taxonomy.multilabel


def cache_dir() -> Path:
    return settings.TAGLOOP_CACHE_DIR / "keypoints"


def iter_keypoints(asset_ids: Sequence[int], progress: Callable[[int, int], None] | None = None) -> Iterator[Keypoints]:
    """Keypoints of each asset, in order, LOAD_BATCH at a time. A deleted asset, or a file that
    cannot be read, gives no keypoints (the latter logged with its name): it is then scored by
    the head alone."""
    ids = [int(a) for a in asset_ids]
    for start in range(0, len(ids), LOAD_BATCH):
        batch = ids[start:start + LOAD_BATCH]
        rows = {a: (f, sha) for a, f, sha in Asset.objects.filter(pk__in=batch).values_list("id", "file", "sha256")}
        present = [a for a in batch if a in rows]
        kps, problems = load_or_extract([settings.MEDIA_ROOT / rows[a][0] for a in present],
                                        [rows[a][1] for a in present], cache_dir())
        for msg in problems:
            log.warning("keypoints: %s", msg)
        found = dict(zip(present, kps))
        yield from (found.get(a, empty()) for a in batch)
        if progress:
            progress(min(start + LOAD_BATCH, len(ids)), len(ids))


@dataclass
class Fitted:
    """A model version's local evidence: the index of its templates and the fusion weight."""

    index: MatchIndex
    weight: float
    asset_ids: np.ndarray  # template assets, in the index's image order
    classes: np.ndarray  # their class (column of the model's tag_ids)
    info: dict = field(default_factory=dict)
    # scores already computed by this retrain (its labeled assets): the rescore reuses them
    known: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {int(a): i for i, a in enumerate(self.asset_ids)}

    def scores(self, asset_ids: Sequence[int], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(n, n_classes) inlier scores; a template is matched leave-one-out."""
        ids = [int(a) for a in asset_ids]
        todo = [a for a in ids if a not in self.known]
        new = dict(zip(todo, scores_of(self.index, iter_keypoints(todo, progress),
                                       [self.position.get(a) for a in todo])))
        return np.array([self.known.get(a, new.get(a)) for a in ids]).reshape(len(ids), self.index.n_classes)

    def remember(self, asset_ids: Sequence[int], scores: np.ndarray) -> None:
        self.known.update(zip((int(a) for a in asset_ids), scores))

    # for_version serves only a Fitted whose weight is > 0: the two below always fuse
    def fuse_assets(self, P: np.ndarray, asset_ids: Sequence[int]) -> np.ndarray:
        return fuse(P, self.scores(asset_ids), self.weight)

    def fuse_files(self, P: np.ndarray, files: Sequence[BinaryIO]) -> np.ndarray:
        """Uploaded images (the predict API): extracted here, never cached or stored."""
        kps = []
        for f in files:
            f.seek(0)
            try:
                kps.append(extract(read_gray(f)))
            except ValueError:  # decoded once for the CNN already: only SIFT's reader refused it
                kps.append(empty())
        return fuse(P, scores_of(self.index, kps, [None] * len(kps)), self.weight)


def fit(asset_ids: np.ndarray, y: np.ndarray, newness: np.ndarray, X: np.ndarray, n_classes: int,
        progress: Callable[[str, int, int], None] | None = None) -> Fitted:
    """Index the templates among the training labels and pick the weight on those labels."""
    beat = (lambda what: (lambda d, t: progress(what, d, t))) if progress else (lambda what: None)
    tpl = choose_templates(y, newness)
    index = MatchIndex(list(iter_keypoints(asset_ids[tpl], beat("keypoints of templates"))), y[tpl], n_classes)
    fitted = Fitted(index, 0.0, asset_ids[tpl], y[tpl])
    fitted.weight, fitted.info, s = fit_weight(index, iter_keypoints(asset_ids, beat("matching labeled assets")),
                                               [fitted.position.get(int(a)) for a in asset_ids], y, X)
    fitted.remember(asset_ids, s)
    fitted.info["templates"] = len(tpl)
    return fitted


# -- saved next to the head ---------------------------------------------------------------
_loaded: dict[tuple[str, float], Fitted | None] = {}
_lock = threading.Lock()


def sidecar(mv: ModelVersion) -> Path:
    """``<artifact>.local.npz``: the templates, their classes and the weight (kept for the record);
    ``<artifact>.local.faiss`` (+ ``.npz``): the built index, while the version may serve."""
    path = settings.TAGLOOP_MODEL_DIR / mv.artifact
    return path.with_name(path.stem + ".local.npz")


def index_path(mv: ModelVersion) -> Path:
    return sidecar(mv).with_suffix(".faiss")


def save(mv: ModelVersion, fitted: Fitted) -> None:
    path = sidecar(mv)
    if fitted.weight > 0:
        fitted.index.save(index_path(mv))
    with atomic_write(path) as f:
        np.savez(f, asset_ids=fitted.asset_ids, classes=fitted.classes, weight=fitted.weight,
                 n_classes=fitted.index.n_classes)
    _remember((str(path), path.stat().st_mtime), fitted if fitted.weight > 0 else None)


def delete(mv: ModelVersion, keep_record: bool = False) -> None:
    """The version's index files (1 KB to 1 GB), and its record unless ``keep_record``."""
    index = index_path(mv)
    for p in [index, index.with_name(index.name + ".npz")] + ([] if keep_record else [sidecar(mv)]):
        p.unlink(missing_ok=True)


def weight_of(mv: ModelVersion | None) -> float:
    """The fusion weight a version was saved with (0: none, or it did not use local evidence)."""
    path = sidecar(mv) if mv is not None else None
    if path is None or not path.is_file():
        return 0.0
    with np.load(path) as z:
        return float(z["weight"])


def for_version(mv: ModelVersion) -> Fitted | None:
    """The version's local evidence, or None when it has none (or its weight is 0). The saved
    index is read once per process and kept for the next call."""
    path = sidecar(mv)
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime)
    with _lock:
        if key in _loaded:
            return _loaded[key]
    with np.load(path) as z:
        ids, classes, weight = z["asset_ids"], z["classes"], float(z["weight"])
    fitted = None
    if weight > 0:
        if index_path(mv).is_file():
            fitted = Fitted(MatchIndex.load(index_path(mv)), weight, ids, classes)
        else:  # pruned: only a version that is neither live nor among the newest
            log.warning("model %s: its keypoint index was pruned, scoring without matches", mv.pk)
    _remember(key, fitted)
    return fitted


def _remember(key: tuple[str, float], fitted: Fitted | None) -> None:
    with _lock:
        _loaded[key] = fitted
        while len(_loaded) > CACHED_VERSIONS:
            _loaded.pop(next(iter(_loaded)))
