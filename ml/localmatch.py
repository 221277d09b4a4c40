"""Local-feature evidence: spatially verified SIFT matches against labelled images.

Why: a logo that covers 2 % of a photo barely moves a globally pooled CNN embedding, even on
tiles. Its keypoints, though, match the same logo in a labelled photo, and those matches agree
on one similarity transform (position, scale, rotation); matches on background do not. The
number of keypoints that agree (RANSAC inliers) is strong, rare evidence: on fl27-28way,
photos with >= 8 inliers to some class were that class 97 % of the time, and a class with no
rigid pattern (scenes, "none") simply gets no inliers, so the head's answer stands.

Pipeline (all arrays, no Django):
- ``extract``: RootSIFT keypoints of one image (grey, longest side <= ``max_side``), keypoint
  positions in the original image's pixels.
- ``MatchIndex``: the descriptors of labelled images in one faiss index; ``scores`` gives a
  query image's best inlier count per class. A match is kept when its nearest labelled
  descriptor is clearly closer than the nearest one of *another* class (Lowe's ratio test,
  made class-aware: the second-nearest descriptor is usually the same logo in another photo of
  the same brand, which a plain ratio test would throw away).
- ``fuse``: log p(class) + weight * min(inliers, cap), renormalised; ``pick_weight`` chooses
  the weight on out-of-fold data (0 when matching does not help, e.g. on scene tags).
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import cv2
import faiss
import numpy as np

from ml.atomic import atomic_write, temp_path_for
from ml.decision import apply_bias
from ml.preprocess import load_rgb

MAX_SIDE = 1024  # SIFT on longer sides costs time and finds the same logos
N_FEATURES = 1000  # per image, strongest first
RATIO = 0.8  # class-aware Lowe ratio
NEIGHBOURS = 10  # per query descriptor
MIN_MATCHES = 5  # tentative matches a labelled image needs before RANSAC is tried
REPROJ_PX = 6.0  # RANSAC inlier tolerance (pixels of the query image as extracted)
CAP = 20  # inliers beyond this add no evidence (one clear logo is enough)
EXACT_BELOW = 20_000  # descriptors; below this a flat index is fast enough
NPROBE = 16
WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class Keypoints:
    pts: np.ndarray  # (n, 2) float32, x/y in the original image's pixels
    desc: np.ndarray  # (n, 128) float16 RootSIFT

    def __len__(self) -> int:
        return len(self.pts)


def empty() -> Keypoints:
    return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float16))


def extract(gray: np.ndarray, max_side: int = MAX_SIDE, n_features: int = N_FEATURES) -> Keypoints:
    """RootSIFT keypoints of a grey uint8 image (h, w)."""
    h, w = gray.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    kps, desc = cv2.SIFT_create(nfeatures=n_features).detectAndCompute(gray, None)
    if desc is None or not len(kps):
        return empty()
    # RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root -> Hellinger kernel
    desc = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))
    pts = np.array([k.pt for k in kps], np.float32) / scale
    return Keypoints(pts, desc.astype(np.float16))


def read_gray(src: str | Path | BinaryIO) -> np.ndarray:
    """Grey pixels of an image file (a path, or an open binary file such as an upload);
    ValueError naming the file when it cannot be decoded. OpenCV first (fast JPEG/PNG/WebP/GIF,
    EXIF-rotated); what it cannot read (Targa, ICO, PCX, ...) goes through Pillow like the
    CNN's input does."""
    if isinstance(src, (str, Path)):
        gray, name = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE), str(src)
    else:
        data = np.frombuffer(src.read(), np.uint8)
        gray = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if len(data) else None
        name = getattr(src, "name", None) or "upload"
        src.seek(0)
    if gray is not None:
        return gray
    try:
        return np.asarray(load_rgb(src).convert("L"))
    except (OSError, ValueError) as exc:  # load_rgb: ValueError for empty/truncated/bomb
        raise ValueError(f"{name}: not a readable image ({exc})") from None


def extract_paths(paths: Sequence[str | Path], workers: int = 2,
                  on_done: Callable[[int], None] | None = None) -> tuple[list[Keypoints], list[str]]:
    """Keypoints of each file (empty for a file that cannot be read) and the problems found,
    one message per bad file; the other files go on."""
    cv2.setNumThreads(1)  # we parallelise over images; OpenCV's own pool would oversubscribe
    problems: list[str] = []

    def one(p: str | Path) -> Keypoints:
        try:
            return extract(read_gray(p))
        except (ValueError, cv2.error) as exc:
            problems.append(str(exc))
            return empty()

    out: list[Keypoints] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 releases the GIL
        for kp in pool.map(one, paths):
            out.append(kp)
            if on_done:
                on_done(1)
    return out, problems


CACHE_VERSION = "sift-v1"  # bump when extract() changes


def load_or_extract(paths: Sequence[str | Path], shas: Sequence[str], cache_dir: str | Path, workers: int = 2,
                    on_done: Callable[[int], None] | None = None) -> tuple[list[Keypoints], list[str]]:
    """Keypoints per file, cached by content as ``<cache_dir>/sift-v1/<sha[:2]>/<sha>.npz``:
    each file is extracted once. A file that cannot be read gets empty keypoints (cached too:
    the same bytes fail the same way) and one message in the returned problems."""
    root = Path(cache_dir) / CACHE_VERSION
    files = [root / s[:2] / f"{s}.npz" for s in shas]
    todo = [i for i, f in enumerate(files) if not f.is_file()]
    problems: list[str] = []
    if on_done and len(files) > len(todo):
        on_done(len(files) - len(todo))  # found in the cache
    if todo:
        kps, problems = extract_paths([paths[i] for i in todo], workers, on_done)
        for i, kp in zip(todo, kps):
            files[i].parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(files[i], fsync=False) as f:
                np.savez(f, pts=kp.pts, desc=kp.desc)
    out = []
    for f in files:
        with np.load(f) as z:
            out.append(Keypoints(z["pts"], z["desc"]))
    return out, problems


def cached_keypoints(paths: Sequence[str], shas: Sequence[str], cache_dir: str | Path,
                     workers: int = 2) -> list[Keypoints]:
    """load_or_extract with a progress bar, problems printed (the CLIs)."""
    from tqdm import tqdm

    with tqdm(total=len(paths), desc="SIFT keypoints", unit="img") as bar:
        out, problems = load_or_extract(paths, shas, cache_dir, workers, bar.update)
    for msg in problems:
        print(f"  skipped: {msg}", file=sys.stderr)
    return out


ADD_ROWS = 100_000  # descriptors converted to float32 at a time while adding


def ann_index(parts: Sequence[np.ndarray]) -> faiss.Index:
    """Approximate nearest neighbours over the (n_i, 128) float16 descriptor blocks, added a
    block at a time (no float32 copy of all of them). IVF: on fl27 folds (~230k descriptors)
    it builds in ~10 s and answers a query image in ~27 ms, where HNSW took 33 s / 63 ms and
    gave the same accuracy; exact search for small sets (tests, tiny libraries)."""
    n = sum(len(p) for p in parts)
    if n < EXACT_BELOW:
        index = faiss.IndexFlatL2(128)
    else:
        # ~4 sqrt(n) lists, with the >= 39 training points per centroid faiss asks for
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(128), 128, nlist)
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False))
        starts = np.cumsum([0] + [len(p) for p in parts])
        block = np.searchsorted(starts, sample, side="right") - 1
        index.train(np.concatenate([parts[b][sample[block == b] - starts[b]] for b in np.unique(block)])
                    .astype(np.float32))
        index.nprobe = NPROBE
    for p in parts:
        for start in range(0, len(p), ADD_ROWS):
            index.add(p[start:start + ADD_ROWS].astype(np.float32))
    return index


class MatchIndex:
    """Descriptors of labelled images (``labels[i]`` = class of ``images[i]``, -1 = not a
    template, e.g. a background class) in one index, for per-class inlier counts."""

    def __init__(self, images: Sequence[Keypoints], labels: np.ndarray, n_classes: int) -> None:
        self.n_classes = n_classes
        keep = [i for i, c in enumerate(labels) if c >= 0 and len(images[i])]
        self.owner, self.pts = stack(images, keep)
        self.cls = np.asarray(labels, np.int32)[self.owner] if len(self.owner) else np.zeros(0, np.int32)
        self.index = ann_index([images[i].desc for i in keep])

    def save(self, path: str | Path) -> None:
        """The built index in two files, ``path`` (the faiss index) and ``path.npz`` (keypoint
        owners, classes, positions): loading them costs a file read, not a k-means and a
        keypoint read per template."""
        path = Path(path)
        with atomic_write(path.with_name(path.name + ".npz")) as f:
            np.savez(f, owner=self.owner, cls=self.cls, pts=self.pts, n_classes=self.n_classes)
        tmp = temp_path_for(path)
        faiss.write_index(self.index, str(tmp))
        tmp.replace(path)  # readers see the old index or the new one, never half

    @classmethod
    def load(cls, path: str | Path) -> MatchIndex:
        path = Path(path)
        self = cls.__new__(cls)
        with np.load(path.with_name(path.name + ".npz")) as z:
            self.owner, self.cls, self.pts, self.n_classes = z["owner"], z["cls"], z["pts"], int(z["n_classes"])
        self.index = faiss.read_index(str(path))
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = NPROBE
        return self

    def _without(self, image: int | None) -> faiss.SearchParameters | None:
        """Search parameters that skip ``image``'s descriptors (ids are contiguous per image).
        Filtering the neighbours after the search is not enough: a photo's nearest descriptors
        are mostly its own, so a leave-one-out query would often find nothing else."""
        if image is None:
            return None
        lo, hi = np.searchsorted(self.owner, [image, image + 1])
        if lo == hi:
            return None  # not a template (or no keypoints): nothing to skip
        return skip_ids(self.index, int(lo), int(hi))

    def scores(self, query: Keypoints, exclude: int | None = None) -> np.ndarray:
        """(n_classes,) the most RANSAC inliers of ``query`` to one labelled image per class.
        ``exclude``: a labelled image to ignore (leave-one-out scores of the labelled set)."""
        if not len(query) or self.index.ntotal == 0:
            return np.zeros(self.n_classes)
        k = min(NEIGHBOURS, self.index.ntotal)
        # faiss lists neighbours nearest first; empty slots (-1) come last
        dist, nn = self.index.search(query.desc.astype(np.float32), k, params=self._without(exclude))
        dist, nn = np.where(nn >= 0, dist, np.inf), nn.clip(0)
        qi, kk = np.nonzero(ratio_matches(dist, self.cls[nn]))
        m = nn[qi, kk]
        return best_per_class(query.pts[qi], self.pts[m], self.owner[m], self.cls[m], tolerance(query.pts),
                              self.n_classes)


def stack(images: Sequence[Keypoints], keep: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(owner image, position) of every keypoint of ``images[keep]``, in the order an index
    built from their descriptors numbers them."""
    owner = np.concatenate([np.full(len(images[i]), i, np.int32) for i in keep] or [np.zeros(0, np.int32)])
    pts = np.concatenate([images[i].pts for i in keep] or [np.zeros((0, 2), np.float32)])
    return owner, pts


def best_per_class(src: np.ndarray, dst: np.ndarray, owner: np.ndarray, cls: np.ndarray, tol: float,
                   n_classes: int, ransac: Callable[[np.ndarray, np.ndarray, float], int] | None = None) -> np.ndarray:
    """(n_classes,) the most inliers of one query image to one labelled image per class, from
    its tentative matches: query points ``src``, matched points ``dst``, and the image
    (``owner``) and class (``cls``) each match points to. An image needs MIN_MATCHES before
    RANSAC (``ransac``, default ``inliers``) is tried."""
    ransac = ransac or inliers
    out = np.zeros(n_classes)
    for img in np.unique(owner):
        sel = owner == img
        if sel.sum() >= MIN_MATCHES:
            c = cls[sel][0]
            out[c] = max(out[c], ransac(src[sel], dst[sel], tol))
    return out


def skip_ids(index: faiss.Index, lo: int, hi: int) -> faiss.SearchParameters:
    """Search parameters for ``index`` that leave out the ids lo..hi-1."""
    inner = faiss.IDSelectorRange(lo, hi)
    sel = faiss.IDSelectorNot(inner)
    params = (faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe) if hasattr(index, "nprobe")
              else faiss.SearchParameters(sel=sel))
    params.referenced_objects = [inner, sel]  # the C++ side holds raw pointers: keep them alive
    return params


def ratio_matches(dist: np.ndarray, cls: np.ndarray, floor: np.ndarray | None = None) -> np.ndarray:
    """(rows, k) bool: which listed neighbours pass the class-aware ratio test. Per row (one
    query descriptor) ``dist`` is ascending with missing slots = inf, ``cls`` the neighbours'
    classes. A neighbour counts if it comes before any other class (so it is of the nearest
    one) and is clearly closer than that other class (squared L2: compare the squared ratio).
    No other class listed: its distance is at least the farthest listed one, or ``floor`` (rows,)
    where the caller knows a larger lower bound (ml.match_table: its search depth)."""
    found = np.isfinite(dist)
    cls = np.where(found, cls, -1)
    other = found & (cls != cls[:, :1])
    has_other, first_other = other.any(1), other.argmax(1)
    farthest = np.where(found, dist, -np.inf).max(axis=1)
    if floor is not None:
        farthest = np.maximum(farthest, floor)
    d_other = np.where(has_other, dist[np.arange(len(dist)), first_other], farthest)
    k = dist.shape[1]
    before = np.arange(k)[None] < np.where(has_other, first_other, k)[:, None]
    return before & found & (dist < (RATIO ** 2) * d_other[:, None])


def tolerance(pts: np.ndarray) -> float:
    """RANSAC tolerance in original pixels of a query image (REPROJ_PX at extraction size)."""
    return REPROJ_PX * max(1.0, float(np.ptp(pts, axis=0).max()) / MAX_SIDE) if len(pts) else REPROJ_PX


def inliers(src: np.ndarray, dst: np.ndarray, tol: float) -> int:
    """Distinct query keypoints consistent with one similarity transform."""
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=tol,
                                         maxIters=500, confidence=0.99)
    if m is None or inl is None:
        return 0
    return len(np.unique(src[inl.ravel().astype(bool)], axis=0))


def fuse(proba: np.ndarray, scores: np.ndarray, weight: float, cap: float = CAP) -> np.ndarray:
    """Class probabilities (n, k) with inlier evidence (n, k) added in log space: a per-photo
    log-bias, so ml.decision.apply_bias does the arithmetic."""
    return apply_bias(proba, weight * np.minimum(scores, cap))


def pick_weight(proba: np.ndarray, scores: np.ndarray, y: np.ndarray,
                score_fn: Callable[[np.ndarray, np.ndarray], float],
                grid: Sequence[float] = WEIGHTS) -> tuple[float, list[float]]:
    """The weight in ``grid`` whose fused argmax scores best on (proba, scores, y); ties go to
    the smaller weight (less trust in the new evidence). Returns (weight, score per weight)."""
    got = [score_fn(y, fuse(proba, scores, w).argmax(1)) for w in grid]
    best = max(range(len(grid)), key=lambda i: (got[i], -grid[i]))
    return float(grid[best]), [float(g) for g in got]
