"""Multi-view image vectors for the product: what `ml.evaluate --method multicrop` measured.

One centre crop at 224 px is what the default embedder looks at. A logo that covers 5 % of a
photo is then a few feature-map cells, averaged away by the global pool. The benchmark's
multi-view features (``ml.features``: the centre crop and its mirror averaged, plus the max over
2x2 and 3x3 grids of overlapping tiles, i.e. the photo seen at 2-3x resolution) lifted fl27
28-way accuracy from 73.1 to 76.5 % and 4-way balanced accuracy from 0.61 to 0.70 with the same
linear head (docs/ml-results.md). They cost one backbone pass per crop: 15 for that spec.

``MultiViewEmbedder`` gives those vectors the `Embedder` interface (``name``, ``dim``,
``embed_paths``, ``embed_images``), so the web app's import, retrain, search and batch predict
use them unchanged. The vector of a spec is laid out exactly like ``ml.features.spec_features``
over a ``ConcatStore`` (per crop, the backbones' features side by side; then each block pooled),
so a recipe measured by the CLI is the recipe the product runs.

``vector_key`` names a (backbones, spec) pair for stores, caches and model rows: vectors of
different keys never meet in one store or one head.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ml.embedding import EmbedResult, Embedder, guarded_load
from ml.features import DECODE_SIDE, POOL_WIDTH, POOLS, parse_spec, pool_crops, view_crops
from ml.preprocess import IMAGE_SIZE, load_rgb, normalize, to_rgb

DEFAULT_VIEWS = "center"
# what the benchmarks measured best on logos in photos (docs/ml-results.md), 15 crops per image
RECOMMENDED_VIEWS = "center,flip:mean+tiles2,tiles3:max"
PRODUCT_VIEWS = ("center", "flip", "full", "tiles2", "tiles3", "tiles4")  # boxes need annotations
_CROPS = {"center": 1, "flip": 1, "full": 1, "tiles2": 4, "tiles3": 9, "tiles4": 16}


def canonical_spec(spec: str) -> str:
    """Validate a feature spec for the product and write it one way ("center:mean" -> "center").

    Raises ``ValueError`` naming the problem: unknown views or pooling, or ``boxes`` (the
    product has no annotated boxes to crop)."""
    blocks = parse_spec(spec)
    out = []
    for views, how in blocks:
        if "boxes" in views:
            raise ValueError(f"view 'boxes' in {spec!r} needs annotated boxes; the product can use {PRODUCT_VIEWS}")
        if how not in POOLS:
            raise ValueError(f"unknown pooling {how!r} in {spec!r}; choose from {POOLS}")
        out.append(",".join(views) + ("" if how == "mean" else f":{how}"))
    return "+".join(out)


def vector_key(backbone: str, spec: str = DEFAULT_VIEWS) -> str:
    """Store/model name of the vectors: the backbone alone for the default centre crop (so
    existing libraries keep their vectors), else ``backbone@spec`` with ':' written as '.'
    (the key is also a folder name)."""
    canon = canonical_spec(spec)
    return backbone if canon == DEFAULT_VIEWS else f"{backbone}@{canon.replace(':', '.')}"


def crops_per_image(spec: str) -> int:
    """Backbone passes per image and backbone: the cost factor against the centre crop."""
    return sum(_CROPS[v] for v in {v for views, _ in parse_spec(canonical_spec(spec)) for v in views})


class MultiViewEmbedder:
    """Embeds each image as the pooled features of a spec's crops, with one or more backbones."""

    def __init__(self, bases: Sequence[Embedder], spec: str = RECOMMENDED_VIEWS) -> None:
        if not bases:
            raise ValueError("need at least one backbone")
        self.bases = list(bases)
        self.spec = canonical_spec(spec)
        self.blocks = parse_spec(self.spec)
        self.views = sorted({v for views, _ in self.blocks for v in views})
        backbone = "+".join(b.name for b in self.bases)
        self.name = vector_key(backbone, self.spec)
        self.dim = sum(b.dim for b in self.bases) * sum(POOL_WIDTH[how] for _, how in self.blocks)
        self.input_size = max(b.input_size for b in self.bases)
        self.runtime = self.bases[0].runtime
        # decode side: tiles need ~3x the input in pixels, else what the plain embedders decode
        tiles = any(v.startswith("tiles") for v in self.views)
        self.draft_size = (DECODE_SIDE * self.input_size // IMAGE_SIZE if tiles
                           else max(b.draft_size for b in self.bases))

    # ---- one image ----------------------------------------------------------------------
    def _crops(self, img: Image.Image) -> list[dict[str, np.ndarray]]:
        """Per backbone: {view: uint8 (m, S, S, 3)} at that backbone's input size."""
        return [{v: view_crops(img, v, size=b.input_size) for v in self.views} for b in self.bases]

    def _pool(self, feats: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Per-backbone crop features -> one vector in ``spec_features``' layout."""
        per_view = {v: np.concatenate([f[v] for f in feats], axis=1) for v in self.views}
        blocks = [pool_crops([np.concatenate([per_view[v] for v in views])], how)[0]
                  for views, how in self.blocks]
        return np.concatenate(blocks).astype(np.float32)

    def _split(self, crops: dict[str, np.ndarray], out: np.ndarray) -> dict[str, np.ndarray]:
        feats, start = {}, 0
        for v in self.views:
            feats[v] = out[start:start + len(crops[v])]
            start += len(crops[v])
        return feats

    def _embed(self, imgs: list[Image.Image], here: bool) -> np.ndarray:
        """Crops of the images, then one model call per backbone for all of them. ``here``: on
        the calling thread (CPU runtimes run one image per task in the pool); else through
        ``embed_arrays`` (CUDA: one large batch)."""
        crops = [self._crops(im) for im in imgs]
        per_image: list[list[dict[str, np.ndarray]]] = [[] for _ in imgs]
        for k, base in enumerate(self.bases):
            stacked = [np.concatenate([c[k][v] for v in self.views]) for c in crops]
            run = base.embed_arrays_here if here else base.embed_arrays
            out = run(normalize(np.concatenate(stacked)))
            start = 0
            for i, s in enumerate(stacked):
                per_image[i].append(self._split(crops[i][k], out[start:start + len(s)]))
                start += len(s)
        return np.stack([self._pool(f) for f in per_image]) if imgs else np.zeros((0, self.dim), np.float32)

    # ---- the Embedder interface --------------------------------------------------------------
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (any mode) -> (N, dim) float32."""
        rgb = [im if im.mode == "RGB" else to_rgb(im) for im in images]  # alpha on white, 16-bit scaled
        return self._run(rgb, lambda im: im).vectors

    def embed_paths(self, paths: Sequence[str | Path]) -> EmbedResult:
        """Decode (draft JPEG at the size the tiles need) + embed; bad files land in ``errors``
        by index with the same messages as ``Embedder.embed_paths``."""
        return self._run(list(paths), lambda p: guarded_load(p, lambda q: load_rgb(q, draft_size=self.draft_size)))

    def _run(self, items: list[Any], load: Callable[[Any], Image.Image | str]) -> EmbedResult:
        vectors: list[np.ndarray] = []
        ok: list[int] = []
        errors: dict[int, str] = {}
        if self.runtime == "cuda":
            step = max(1, self.bases[0].batch_size // max(1, crops_per_image(self.spec)))
            with ThreadPoolExecutor(self.bases[0].workers) as pool:
                for s in range(0, len(items), step):
                    loaded = list(pool.map(load, items[s:s + step]))
                    good = [(s + j, im) for j, im in enumerate(loaded) if not isinstance(im, str)]
                    errors.update({s + j: im for j, im in enumerate(loaded) if isinstance(im, str)})
                    if good:
                        vectors.append(self._embed([im for _, im in good], here=False))
                        ok.extend(i for i, _ in good)
        else:
            def task(i: int) -> tuple[int, np.ndarray | str]:
                img = load(items[i])
                return i, img if isinstance(img, str) else self._embed([img], here=True)[0]

            pool = self.bases[0].cpu_pool()
            window: deque[Future] = deque()
            for i in range(len(items)):  # bounded window keeps memory flat on huge imports
                window.append(pool.submit(task, i))
                if len(window) >= 4 * self.bases[0].workers:
                    self._collect(window.popleft().result(), vectors, ok, errors)
            while window:
                self._collect(window.popleft().result(), vectors, ok, errors)
        vecs = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return EmbedResult(vecs.astype(np.float32, copy=False), ok, errors)

    @staticmethod
    def _collect(res: tuple[int, np.ndarray | str], vectors: list[np.ndarray], ok: list[int],
                 errors: dict[int, str]) -> None:
        i, v = res
        if isinstance(v, str):
            errors[i] = v
        else:
            vectors.append(v[None])
            ok.append(i)

    def close(self) -> None:
        for b in self.bases:
            b.close()

    def __repr__(self) -> str:
        return f"MultiViewEmbedder({self.name!r}, runtime={self.runtime!r}, dim={self.dim})"


def make_embedder(backbone: str, views: str = DEFAULT_VIEWS, **kwargs: Any) -> Embedder | MultiViewEmbedder:
    """The product's embedder for TAGLOOP_BACKBONE (one name, or several joined by '+') and
    TAGLOOP_VIEWS. The default (one backbone, centre crop) is the plain, fastest `Embedder`."""
    names = [b.strip() for b in backbone.split("+") if b.strip()]
    if not names:
        raise ValueError(f"no backbone named in {backbone!r}")
    if len(names) == 1 and canonical_spec(views) == DEFAULT_VIEWS:
        return Embedder(names[0], **kwargs)
    return MultiViewEmbedder([Embedder(n, **kwargs) for n in names], views)
