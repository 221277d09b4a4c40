"""Cached multi-view features for benchmark tasks (and any list of files).

A *view* turns one image into m crops of the backbone's input size (224 for Lite0, 260 for
Lite2) that the backbone embeds:

- ``center``: resize shorter side + center crop (the contract's `to_input`, the baseline)
- ``flip``:   the center crop mirrored (test-time augmentation)
- ``full``:   the whole image squashed to 224x224 (nothing cropped away: logos near the border)
- ``tiles2``/``tiles3``/``tiles4``: a 2x2 / 3x3 / 4x4 grid of 50 %-overlapping tiles of the
  whole image, each resized to 224 -> the backbone sees the photo at ~2x / ~3x / ~4x
  resolution. Small logos in big photos vanish under one global pooling at 224; on a tile
  they are 2-4x larger.
- ``boxes``:  the annotated logo boxes (with some context) -> extra *training* crops only.

Features are cached per (backbone, view, file sha256) under ``cache_dir``
(default ``~/.cache/tagloop/features``, env ``TAGLOOP_FEATURE_CACHE``) as float16 .npy,
so the expensive part (decode + embed) runs once per file and view.

A *feature spec* names how crop features pool into one vector per image, e.g.
``"center,flip:mean+tiles2,tiles3:max"`` = [mean(center, flip) | max over all tiles].
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ml.atomic import atomic_write
from ml.preprocess import IMAGE_SIZE, load_rgb, normalize, resize_crop

VIEWS = ("center", "flip", "full", "tiles2", "tiles3", "tiles4", "boxes")
POOLS = ("mean", "max", "meanmax")
POOL_WIDTH = {"mean": 1, "max": 1, "meanmax": 2}  # feature blocks per pooling
CACHE_VERSION = "v1"  # bump when a view's pixels change, so stale caches are not reused
BOX_CONTEXT = 0.15  # grow boxes by 15 % per side: the backbone needs some surround
MIN_BOX_SIDE = 24  # tinier annotations are mostly noise at 224 input
DECODE_SIDE = 3 * IMAGE_SIZE  # enough pixels for tiles3 at 224 (scaled for bigger inputs)


def default_cache_dir() -> Path:
    env = os.environ.get("TAGLOOP_FEATURE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tagloop" / "features"


def _grid_tiles(img: Image.Image, g: int, size: int) -> list[Image.Image]:
    """g x g tiles, each 2/(g+1) of the side, stride 1/(g+1): 50 % overlap, so a logo cut
    by one tile border is whole in the neighbour."""
    w, h = img.size
    tw, th = 2 * w / (g + 1), 2 * h / (g + 1)
    out = []
    for r in range(g):
        for c in range(g):
            box = (c * w / (g + 1), r * h / (g + 1), c * w / (g + 1) + tw, r * h / (g + 1) + th)
            out.append(img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0))
    return out


def _box_crops(img: Image.Image, boxes: np.ndarray, scale: float, size: int) -> list[Image.Image]:
    """Crops of annotated boxes (given in original-file pixels; `scale` = decoded/original)."""
    w, h = img.size
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64) * scale:
        bw, bh = x2 - x1, y2 - y1
        if min(bw, bh) < MIN_BOX_SIDE * scale:
            continue
        # square-ish crop around the box so the logo is not distorted too much
        side = max(bw, bh) * (1 + 2 * BOX_CONTEXT)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        box = (max(0.0, cx - side / 2), max(0.0, cy - side / 2),
               min(float(w), cx + side / 2), min(float(h), cy + side / 2))
        out.append(img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0))
    return out


def view_crops(img: Image.Image, view: str, *, boxes: np.ndarray | None = None,
               scale: float = 1.0, size: int = IMAGE_SIZE) -> np.ndarray:
    """One view of a decoded RGB image -> uint8 (m, size, size, 3); m may be 0 for boxes."""
    if view == "center":
        crops = [resize_crop(img, size)]
    elif view == "flip":
        crops = [resize_crop(img, size).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    elif view == "full":
        crops = [img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)]
    elif view in ("tiles2", "tiles3", "tiles4"):
        crops = _grid_tiles(img, int(view[-1]), size)
    elif view == "boxes":
        crops = _box_crops(img, boxes if boxes is not None else np.zeros((0, 4)), scale, size)
    else:
        raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([np.asarray(c, dtype=np.uint8) for c in crops])


class FeatureStore:
    """Disk cache of per-view crop features, filled with an `ml.embedding.Embedder`."""

    def __init__(self, embedder=None, *, backbone: str = "efficientnet-lite0",
                 cache_dir: str | Path | None = None, runtime: str = "auto",
                 batch_size: int = 32) -> None:
        self._embedder = embedder
        self.backbone = getattr(embedder, "name", None) or backbone
        self.runtime = runtime
        self.batch_size = batch_size
        self.root = Path(cache_dir) if cache_dir else default_cache_dir()

    @property
    def embedder(self):
        if self._embedder is None:  # lazy: a warm cache needs no model at all
            from ml.embedding import Embedder
            self._embedder = Embedder(self.backbone, runtime=self.runtime,
                                      batch_size=self.batch_size)
        return self._embedder

    def _file(self, view: str, sha: str) -> Path:
        return self.root / self.backbone / f"{view}-{CACHE_VERSION}" / sha[:2] / f"{sha}.npy"

    def missing(self, shas: Sequence[str], view: str) -> list[int]:
        return [i for i, s in enumerate(shas) if not self._file(view, s).is_file()]

    def ensure(self, paths: Sequence[str], shas: Sequence[str], views: Sequence[str],
               boxes: Sequence[np.ndarray] | None = None) -> None:
        """Compute and cache every missing (view, file); decodes each file once."""
        todo: dict[int, list[str]] = {}
        for v in views:
            for i in self.missing(shas, v):
                todo.setdefault(i, []).append(v)
        if not todo:
            return
        order = sorted(todo)
        # crops at the backbone's input size: Lite0 takes 224, Lite2 260 (its embed_arrays
        # rejects any other size); the decode keeps enough pixels for tiles3 at that size
        size = int(getattr(self.embedder, "input_size", IMAGE_SIZE))
        decode_side = DECODE_SIDE * size // IMAGE_SIZE

        def decode(i: int) -> tuple[int, dict[str, np.ndarray]]:
            img = load_rgb(paths[i], draft_size=decode_side)
            with Image.open(paths[i]) as raw:  # header only: boxes are in stored pixels
                scale = max(img.size) / max(raw.size)
                rotated = exif_rotated(raw)
            # boxes were drawn on the stored (un-rotated) pixels; on a rotated file they
            # would point elsewhere, so such a file contributes no box crops
            b = boxes[i] if boxes is not None and not rotated else None
            return i, {v: view_crops(img, v, boxes=b, scale=scale, size=size) for v in todo[i]}

        pending: list[tuple[int, str, np.ndarray]] = []
        bar = tqdm(total=len(order), desc=f"embed {','.join(views)}", unit="img", file=sys.stderr)
        # one decode thread overlaps JPEG decoding with the (multi-threaded) model run
        with ThreadPoolExecutor(max_workers=1) as pool:
            for i, crops in pool.map(decode, order):
                pending += [(i, v, c) for v, c in crops.items()]
                if sum(len(c) for *_, c in pending) >= 4 * self.batch_size:
                    self._flush(pending, shas)
                    pending = []
                bar.update(1)
        self._flush(pending, shas)
        bar.close()

    def _flush(self, pending: list[tuple[int, str, np.ndarray]], shas: Sequence[str]) -> None:
        if not pending:
            return
        crops = np.concatenate([c for *_, c in pending])
        feats = (self.embedder.embed_arrays(normalize(crops)) if len(crops)
                 else np.zeros((0, 1), np.float32))
        start = 0
        for i, v, c in pending:
            f = self._file(v, shas[i])
            f.parent.mkdir(parents=True, exist_ok=True)
            dim = feats.shape[1] if len(feats) else self.embedder.dim
            # atomic, with a per-process temp name: concurrent runs may fill the same entry
            with atomic_write(f, fsync=False) as out:
                np.save(out, feats[start:start + len(c)].astype(np.float16).reshape(len(c), dim))
            start += len(c)

    def load(self, shas: Sequence[str], view: str) -> list[np.ndarray]:
        """Per file: float32 (m, dim) crop features of one view (must be cached)."""
        return [np.load(self._file(view, s)).astype(np.float32) for s in shas]


class ConcatStore:
    """Several backbones' crop features side by side, e.g. ``"efficientnet-lite0+efficientnet-lite2"``.

    Every backbone embeds the same crops (box crops are filtered in original-file pixels,
    so the counts agree), so per-crop features concatenate along the feature axis and the
    spec/box pooling downstream works unchanged. Each part keeps its own cache."""

    def __init__(self, backbones: Sequence[str], **kwargs) -> None:
        self.parts = [FeatureStore(backbone=b, **kwargs) for b in backbones]
        self.backbone = "+".join(backbones)

    def ensure(self, paths: Sequence[str], shas: Sequence[str], views: Sequence[str],
               boxes: Sequence[np.ndarray] | None = None) -> None:
        for part in self.parts:
            part.ensure(paths, shas, views, boxes)

    def load(self, shas: Sequence[str], view: str) -> list[np.ndarray]:
        per_part = [part.load(shas, view) for part in self.parts]
        return [np.concatenate(crops, axis=1) for crops in zip(*per_part)]


def make_store(backbone: str = "efficientnet-lite0", **kwargs) -> FeatureStore | ConcatStore:
    """A FeatureStore, or a ConcatStore for a "+"-joined list of backbones."""
    names = [b.strip() for b in backbone.split("+") if b.strip()]
    return ConcatStore(names, **kwargs) if len(names) > 1 else FeatureStore(backbone=names[0], **kwargs)


def exif_rotated(raw: Image.Image) -> bool:
    """True when EXIF orientation swaps width and height (load_rgb transposes)."""
    try:
        return raw.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - broken EXIF: load_rgb keeps pixels as stored too
        return False


def pool_crops(crops: list[np.ndarray], how: str) -> np.ndarray:
    """Per image (m_i, d) -> (n, d) or (n, 2d) for meanmax. Empty images give zeros."""
    if how not in POOLS:
        raise ValueError(f"unknown pooling {how!r}; choose from {POOLS}")
    d = next((c.shape[1] for c in crops if c.ndim == 2 and c.shape[1]), 1)
    fns: list[Callable[[np.ndarray], np.ndarray]] = {
        "mean": [lambda c: c.mean(0)], "max": [lambda c: c.max(0)],
        "meanmax": [lambda c: c.mean(0), lambda c: c.max(0)],
    }[how]
    rows = [np.concatenate([fn(c) if len(c) else np.zeros(d, np.float32) for fn in fns])
            for c in crops]
    return np.stack(rows).astype(np.float32)


def parse_spec(spec: str) -> list[tuple[tuple[str, ...], str]]:
    """"center,flip:mean+tiles3:max" -> [(("center","flip"),"mean"), (("tiles3",),"max")]."""
    blocks = []
    for part in spec.split("+"):
        views, _, how = part.partition(":")
        vs = tuple(v.strip() for v in views.split(",") if v.strip())
        bad = [v for v in vs if v not in VIEWS]
        if bad or not vs:
            raise ValueError(f"bad views {bad or part!r} in spec {spec!r}; views: {VIEWS}")
        blocks.append((vs, how.strip() or "mean"))
    return blocks


def spec_views(spec: str) -> list[str]:
    return sorted({v for vs, _ in parse_spec(spec) for v in vs})


def spec_features(store: FeatureStore | ConcatStore, shas: Sequence[str], spec: str) -> np.ndarray:
    """(n, D) image features for a spec; blocks concatenated in spec order."""
    cache: dict[str, list[np.ndarray]] = {}
    blocks = []
    for views, how in parse_spec(spec):
        for v in views:
            if v not in cache:
                cache[v] = store.load(shas, v)
        per_img = [np.concatenate([cache[v][i] for v in views]) for i in range(len(shas))]
        blocks.append(pool_crops(per_img, how))
    return np.concatenate(blocks, axis=1)


def box_features(store: FeatureStore | ConcatStore, shas: Sequence[str],
                 spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Box crops as extra training rows in the spec's layout: a box crop stands in for
    every block (it *is* the logo at high resolution, what the tile max-pool looks for).
    Returns (X (b, D), owner (b,) index into shas)."""
    crops = store.load(shas, "boxes")
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(crops)]).astype(np.int64)
    if not len(owner):
        return np.zeros((0, 0), np.float32), owner
    feats = np.concatenate([c for c in crops if len(c)])
    X = np.concatenate([np.tile(feats, POOL_WIDTH[how]) for _, how in parse_spec(spec)], axis=1)
    return X.astype(np.float32), owner
