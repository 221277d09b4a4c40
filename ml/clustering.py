"""k-means clusters of embeddings, per-cluster statistics and a 2-D map. Arrays in, arrays out.

k from library size: ``round(sqrt(n / 2))`` (the classic rule of thumb), clamped to
[2, 1000]: 24 images -> 3 clusters, the 860-image shoe demo -> 21 (about 40 images a page,
one screen of thumbnails), 1M images -> 1000 (k-means cost grows with n * k; past 1000 a
cluster page is no longer something an operator reads).

Clustering is spherical k-means (cosine) on L2-normalised vectors, through faiss.Kmeans
(``gpu=True`` when faiss sees a GPU). ``TorchAssign`` runs the same Lloyd iterations with the
assignment step as torch matmul + topk on CUDA, for machines with torch CUDA but no faiss-gpu.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from ml.index import normalise, use_gpu

K_MIN, K_MAX = 2, 1000
TSNE_MAX = 50_000  # t-SNE above this is too slow on a CPU: a sample is mapped, the rest by PCA


def choose_k(n: int) -> int:
    if n < 2:
        return max(n, 1)
    return int(min(max(round(math.sqrt(n / 2)), K_MIN), K_MAX, n))


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) unit rows
    assign: np.ndarray  # (n,) int64 cluster index
    distance: np.ndarray  # (n,) float32, 1 - cosine to its centroid (the cluster page's order)


def kmeans(X: np.ndarray, k: int | None = None, niter: int = 20, seed: int = 0,
           max_points_per_centroid: int = 256) -> KMeansResult:
    """Spherical k-means. Training uses at most ``max_points_per_centroid * k`` points (faiss'
    default sampling), then every point is assigned to its nearest centroid."""
    Xn = normalise(X)
    n, d = Xn.shape
    k = min(k or choose_k(n), n)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, gpu=use_gpu(),
                      max_points_per_centroid=max_points_per_centroid, verbose=False)
    km.train(Xn)
    sims, assign = km.index.search(Xn, 1)
    return KMeansResult(
        normalise(km.centroids), assign[:, 0].astype(np.int64), (1.0 - sims[:, 0]).astype(np.float32)
    )


class TorchAssign:
    """faiss.contrib.clustering's dataset interface with the assignment on a torch device:
    nearest centroid by matmul + topk in chunks, centroid sums by index_add_ on the device.
    ``faiss.contrib.clustering.kmeans(k, TorchAssign(X, "cuda"))`` then runs Lloyd on the GPU."""

    def __init__(self, X: np.ndarray, device: str = "cuda", chunk: int = 65_536, dtype=None):
        import torch

        self.torch = torch
        self.x = torch.from_numpy(normalise(X)).to(device)
        self.chunk = chunk
        # bf16/fp16 matmul for the search step only; sums and norms stay float32.
        self.dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)

    def count(self) -> int:
        return int(self.x.shape[0])

    def dim(self) -> int:
        return int(self.x.shape[1])

    def get_subset(self, indices):
        return self.x[self.torch.as_tensor(indices, device=self.x.device)]

    def perform_search(self, centroids):
        torch = self.torch
        c = centroids.to(self.x.device)
        c_low = c.to(self.dtype)
        half_norm = 0.5 * (c * c).sum(1)
        best_d = torch.empty(self.count(), device=self.x.device)
        best_i = torch.empty(self.count(), dtype=torch.int64, device=self.x.device)
        for s in range(0, self.count(), self.chunk):
            xb = self.x[s: s + self.chunk]
            # argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2)
            score = (xb.to(self.dtype) @ c_low.T).float() - half_norm
            top, idx = torch.topk(score, 1, dim=1)
            best_i[s: s + len(xb)] = idx[:, 0]
            best_d[s: s + len(xb)] = ((xb * xb).sum(1) - 2 * top[:, 0]).clamp_min(0)
        return best_d, best_i

    def assign_to(self, centroids, weights=None):
        torch = self.torch
        D, I = self.perform_search(centroids)
        sums = torch.zeros_like(centroids, device=self.x.device)
        src = self.x if weights is None else self.x * torch.as_tensor(weights, device=self.x.device)[:, None]
        sums.index_add_(0, I, src)
        return I.cpu().numpy(), D, sums


def kmeans_torch(X: np.ndarray, k: int, niter: int = 20, seed: int = 0, device: str = "cuda") -> np.ndarray:
    """Centroids (k, d) from faiss' Lloyd loop with TorchAssign (GPU without faiss-gpu)."""
    from faiss.contrib.clustering import kmeans as contrib_kmeans

    centroids = contrib_kmeans(k, TorchAssign(X, device), niter=niter, seed=seed, verbose=False)
    return normalise(centroids.float().cpu().numpy())


# -- statistics -------------------------------------------------------------------------------
def cluster_stats(assign: np.ndarray, k: int, label: np.ndarray, suggested: np.ndarray,
                  uncertainty: np.ndarray) -> list[dict]:
    """Per cluster, from arrays aligned with ``assign``:
    ``label`` class id of the current label, -1 = unlabeled; ``suggested`` the model's top-1
    class id, -1 = none; ``uncertainty`` in [0, 1], NaN = no suggestion.

    Returns for each cluster: size, n_unlabeled, unlabeled_share, majority_suggested (among
    unlabeled members) with its agreement (share of unlabeled members suggested it),
    mean_uncertainty (unlabeled members), majority_label and purity (share of labeled members
    carrying the majority label), and work_saved (see ``work_saved``)."""
    out = []
    for c in range(k):
        m = assign == c
        size = int(m.sum())
        lab, sug, unc = label[m], suggested[m], uncertainty[m]
        open_ = lab < 0
        n_open = int(open_.sum())
        maj_s, agree = _majority(sug[open_ & (sug >= 0)], n_open)
        maj_l, purity = _majority(lab[~open_], int((~open_).sum()))
        u = unc[open_]
        u = u[~np.isnan(u)]
        mean_unc = float(u.mean()) if len(u) else None
        stats = {
            "size": size,
            "n_unlabeled": n_open,
            "unlabeled_share": n_open / size if size else 0.0,
            "majority_suggested": maj_s,
            "agreement": agree,
            "mean_uncertainty": mean_unc,
            "majority_label": maj_l,
            "purity": purity,
        }
        stats["work_saved"] = work_saved(stats)
        out.append(stats)
    return out


def _majority(values: np.ndarray, denominator: int) -> tuple[int | None, float | None]:
    if not len(values) or not denominator:
        return None, None
    ids, counts = np.unique(values, return_counts=True)
    j = int(counts.argmax())
    return int(ids[j]), float(counts[j] / denominator)


def work_saved(s: dict) -> float:
    """size x unlabeled share x disagreement: how many queue decisions one cluster action can
    replace that the model could not settle by itself. disagreement = 1 - agreement x
    (1 - mean uncertainty): 0 when the model suggests one tag for every open member and is
    sure of it (the queue's 'most confident' run accepts those just as fast), 1 with no model."""
    agreement = s["agreement"] if s["agreement"] is not None else 0.0
    unc = s["mean_uncertainty"] if s["mean_uncertainty"] is not None else 1.0
    disagreement = 1.0 - agreement * (1.0 - unc)
    return round(s["size"] * s["unlabeled_share"] * disagreement, 4)


# -- 2-D map ----------------------------------------------------------------------------------
def embed_2d(X: np.ndarray, method: str = "auto", seed: int = 0, tsne_max: int = TSNE_MAX) -> np.ndarray:
    """(n, 2) coordinates scaled to [-1, 1]. ``method``: auto (t-SNE when n <= tsne_max,
    otherwise t-SNE of a sample with every other point placed by PCA least squares) | pca | tsne."""
    from sklearn.decomposition import PCA

    Xn = normalise(X)
    n = len(Xn)
    if n < 3:
        return np.zeros((n, 2), dtype=np.float32)
    pca = PCA(n_components=min(50, n, Xn.shape[1]), random_state=seed).fit(Xn)
    P = pca.transform(Xn).astype(np.float32)
    if method == "pca" or n < 10:
        return _scale(P[:, :2])
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    sample = np.arange(n) if n <= tsne_max else np.sort(rng.choice(n, tsne_max, replace=False))
    ts = TSNE(2, perplexity=float(min(30, (len(sample) - 1) / 3)), init="pca", random_state=seed,
              max_iter=500 if len(sample) > 5000 else 1000).fit_transform(P[sample])
    if len(sample) == n:
        return _scale(ts)
    # Beyond the sample: a linear map from PCA space to the t-SNE plane, fitted on the sample.
    A, *_ = np.linalg.lstsq(np.c_[P[sample], np.ones(len(sample))], ts, rcond=None)
    out = np.c_[P, np.ones(n)] @ A
    out[sample] = ts
    return _scale(out)


def _scale(Y: np.ndarray) -> np.ndarray:
    Y = Y - Y.mean(axis=0)
    span = np.abs(Y).max() or 1.0
    return (Y / span).astype(np.float32)
