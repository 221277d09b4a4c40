"""Benchmark of ml.index and ml.clustering at library scale, with the exact baseline measured
in the same run.

    .venv/bin/python bench/index.py                      # 1M x 1280, writes bench/out/index.json
    .venv/bin/python bench/index.py --n 200000 --quick   # smaller, for a smoke run
    python bench/index.py --gpu-kmeans-only              # on a CUDA box: torch k-means only

Synthetic vectors: a two-level Gaussian mixture in a 64-d latent space, lifted linearly to
1280-d (+ a little isotropic noise), so nearest neighbours are structured like real embeddings
(recall is meaningless on isotropic noise, where every point is equally far, and trivially 1
on well-separated blobs): ``centers`` (1,000) group centres ~ N(0, I/64), 50 sub-centres per
group at N(0, 0.3^2 I/64) around it, each point = its sub-centre + N(0, 1.0^2 I/64), so the
groups overlap and IVF cells cut through them (recall@20 vs nprobe then behaves like on the
real shoe embeddings); group sizes Zipf-like (weights 1/rank^0.7, as in photo libraries).
Real vectors: EfficientNet-Lite0 embeddings of the shoe photos (the tests' cache), for recall.

Measured: build time, index memory, single-query kNN latency p50/p95 at k=20 and recall@20
against exact search (IndexFlatIP via faiss.knn), flat latency at several sizes (which sets
ml.index.FLAT_MAX), and k-means time for 1,000 clusters (CPU faiss; torch CUDA when present).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss  # noqa: E402

from ml import clustering  # noqa: E402
from ml.index import DEFAULT_NPROBE, VectorIndex, choose_nlist, normalise  # noqa: E402

K = 20


def synth(n: int, d: int, n_centers: int, seed: int = 0, sub_per_center: int = 50,
          sub_spread: float = 0.3, noise: float = 1.0, latent: int = 64, groups: bool = False):
    """Two-level Gaussian mixture in a ``latent``-dimensional space, mapped linearly into ``d``
    dimensions (real embeddings have a low intrinsic dimension, which is what makes IVF lose
    neighbours across cell borders), unit rows. See the module docstring. ``groups``: also
    return each row's group (top-level centre) index."""
    rng = np.random.default_rng(0)  # the same centres and map for data and queries
    centers = rng.standard_normal((n_centers, latent), dtype=np.float32) / np.sqrt(latent)
    subs = (np.repeat(centers, sub_per_center, axis=0)
            + rng.standard_normal((n_centers * sub_per_center, latent), dtype=np.float32) * (sub_spread / np.sqrt(latent)))
    lift = rng.standard_normal((latent, d), dtype=np.float32) / np.sqrt(latent)
    weights = 1.0 / np.arange(1, n_centers + 1) ** 0.7  # Zipf-like: a few big groups, many small
    rng = np.random.default_rng(seed)
    top = rng.choice(n_centers, size=n, p=weights / weights.sum())
    of = top * sub_per_center + rng.integers(0, sub_per_center, size=n)
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65_536):  # in chunks: bounds the temporaries
        e = min(s + 65_536, n)
        z = subs[of[s:e]] + rng.standard_normal((e - s, latent), dtype=np.float32) * (noise / np.sqrt(latent))
        X[s:e] = z @ lift + rng.standard_normal((e - s, d), dtype=np.float32) * (0.05 / np.sqrt(d))
    return (normalise(X), top) if groups else normalise(X)


def latencies(search, Q: np.ndarray) -> dict:
    """One query at a time, as the more-like-this page asks: p50/p95 in ms."""
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    times = []
    for q in Q:
        t = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3)}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def bench_index(X: np.ndarray, Q: np.ndarray, n_latency: int, nprobes: list[int]) -> dict:
    n, d = X.shape
    ids = np.arange(n, dtype=np.int64)
    out: dict = {"n": n, "d": d, "k": K}
    t = time.perf_counter()
    _, truth = faiss.knn(Q, X, K, metric=faiss.METRIC_INNER_PRODUCT)
    out["exact_batch_s"] = round(time.perf_counter() - t, 2)
    flat_lat = latencies(lambda q: faiss.knn(q, X, K, metric=faiss.METRIC_INNER_PRODUCT), Q[:max(5, n_latency // 10)])
    out["flat"] = {"build_s": 0.0, "memory_gb": round(n * d * 4 / 1e9, 3), **flat_lat, "recall_at_20": 1.0}
    if n <= 200_000:  # a flat index copies X; at 1M that is 5 GB more for the same scan
        t = time.perf_counter()
        flat = VectorIndex.build(ids, X, kind="flat")
        out["flat"]["build_s"] = round(time.perf_counter() - t, 2)
        del flat

    t = time.perf_counter()
    ivf = VectorIndex.build(ids, X, kind="ivf")
    build_s = time.perf_counter() - t
    nlist = choose_nlist(n)
    mem = n * (d * 2 + 8) + nlist * d * 4  # fp16 codes + ids + coarse centroids
    out["ivf"] = {"nlist": nlist, "build_s": round(build_s, 2), "memory_gb": round(mem / 1e9, 3), "by_nprobe": {}}
    for nprobe in nprobes:
        _, found = ivf.search(Q, K, nprobe=nprobe)
        lat = latencies(lambda q: ivf.search(q, K, nprobe=nprobe), Q[:n_latency])
        row = {**lat, "recall_at_20": round(recall(found, truth), 4)}
        row["p95_vs_flat"] = round(lat["p95_ms"] / flat_lat["p95_ms"], 4)
        out["ivf"]["by_nprobe"][str(nprobe)] = row
        print(f"  nprobe={nprobe}: {row}", flush=True)
    out["ivf"]["memory_vs_flat"] = round(mem / (n * d * 4), 3)
    return out


def flat_sizes(X: np.ndarray, Q: np.ndarray, sizes: list[int]) -> dict:
    return {str(s): latencies(lambda q: faiss.knn(q, X[:s], K, metric=faiss.METRIC_INNER_PRODUCT), Q[:50])
            for s in sizes if s <= len(X)}


def bench_kmeans_cpu(X: np.ndarray, k: int, niter: int) -> dict:
    t = time.perf_counter()
    res = clustering.kmeans(X, k, niter=niter)
    total = time.perf_counter() - t
    # Baseline in the same run: one exact assignment pass of all n points to k centroids,
    # the unit a k-means iteration over the full data would cost.
    t = time.perf_counter()
    faiss.knn(X, res.centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)
    one_pass = time.perf_counter() - t
    return {"k": k, "niter": niter, "train_points": min(len(X), 256 * k), "total_s": round(total, 2),
            "full_assignment_pass_s": round(one_pass, 2),
            "vs_full_data_lloyd": round(total / (one_pass * (niter + 1)), 3)}


def bench_kmeans_torch(X: np.ndarray, k: int, niter: int) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    clustering.kmeans_torch(X[:100_000], k, niter=2, device=device)  # warm-up: CUDA context, kernels
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    C = clustering.kmeans_torch(X, k, niter=niter, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t
    # quality vs faiss CPU on the same data: mean cosine to the assigned centroid
    sims, _ = faiss.knn(X[:200_000], C, 1, metric=faiss.METRIC_INNER_PRODUCT)
    return {"device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "k": k,
            "niter": niter, "points": len(X), "total_s": round(total, 2), "mean_cos_to_centroid": round(float(sims.mean()), 4)}


def real_recall(path: str | None) -> dict | None:
    files = [path] if path else sorted(glob.glob(str(Path.home() / ".cache/tagloop/test-embeddings/shoes-*.npz")))
    if not files:
        return None
    X = normalise(np.load(files[-1])["X"])
    n = len(X)
    _, truth = faiss.knn(X, X, K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    ivf = VectorIndex.build(np.arange(n), X, kind="ivf")
    nlist = choose_nlist(n)
    rows = {}
    for nprobe in sorted({1, 2, 4, max(1, nlist // 4)}):
        _, found = ivf.search(X, K + 1, nprobe=nprobe)
        rows[str(nprobe)] = round(recall(found[:, 1:], truth[:, 1:]), 4)
    return {"n": n, "source": Path(files[-1]).name, "nlist": nlist, "recall_at_20_by_nprobe": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--centers", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--kmeans-k", type=int, default=1000)
    ap.add_argument("--kmeans-niter", type=int, default=10)
    ap.add_argument("--real", default=None, help="npz with X of real embeddings")
    ap.add_argument("--noise", type=float, default=1.0, help="point spread around its sub-centre")
    ap.add_argument("--sub-spread", type=float, default=0.3, help="sub-centre spread around its centre")
    ap.add_argument("--skip-kmeans", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu-kmeans-only", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "index.json"))
    args = ap.parse_args()

    t = time.perf_counter()
    shape = {"sub_spread": args.sub_spread, "noise": args.noise}
    X = synth(args.n, args.d, args.centers, **shape)
    Q = synth(args.queries, args.d, args.centers, seed=1, **shape)  # same centres, new points
    print(f"synthesised {X.shape} in {time.perf_counter() - t:.1f}s", flush=True)
    result: dict = {"cpu_count": os.cpu_count(), "faiss": faiss.__version__, "gpus": faiss.get_num_gpus(),
                    "synthetic": {"n": args.n, "d": args.d, "centers": args.centers, "sub_per_center": 50, **shape}}
    if args.gpu_kmeans_only:
        result["kmeans_torch"] = bench_kmeans_torch(X, args.kmeans_k, args.kmeans_niter)
    else:
        result["flat_latency_by_n"] = flat_sizes(X, Q, [5_000, 20_000, 50_000, 100_000])
        print("flat by n", result["flat_latency_by_n"], flush=True)
        result["real"] = real_recall(args.real)
        print("real", result["real"], flush=True)
        nprobes = [8, 16, DEFAULT_NPROBE] if args.quick else [16, DEFAULT_NPROBE, 64, 128]
        result["index"] = bench_index(X, Q, min(args.queries, 200), nprobes)
        print("index", json.dumps(result["index"]), flush=True)
        if not args.skip_kmeans:
            result["kmeans_cpu"] = bench_kmeans_cpu(X, args.kmeans_k, args.kmeans_niter)
            print("kmeans", result["kmeans_cpu"], flush=True)
    result["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
