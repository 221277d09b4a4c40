"""Benchmark of the second look's scores (ml.noise.suspicion_components) as a taxonomy grows,
which sets TAGLOOP_SECOND_LOOK_INLINE (above it a worker computes them, not the page load).

    .venv/bin/python bench/noise.py                       # 3k, 10k, 40k labels (~6 min)
    .venv/bin/python bench/noise.py --sizes 1000,3000

Vectors: bench/index.py's synthetic mixture (1280-d, neighbourhoods that overlap like real
embeddings); each top-level group is one of 28 tags (group index mod 28), 5 % of the labels are
flipped to another tag. Per size it prints the seconds of the whole score and of its parts
(the L2 choice, 5 out-of-fold heads, the neighbours), and two alternatives for the neighbours,
measured in the same run: the numpy search ``knn_indices`` used before (baseline; the share of
identical neighbours checks the faiss one) and an IVF index (ml.index, nprobe 32), with the
share of flipped labels found in the top 5 % most suspicious by each. Writes
bench/out/noise.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from index import recall, synth  # noqa: E402  (bench/index.py)
from ml.heads import out_of_fold_proba, train_head  # noqa: E402
from ml.index import VectorIndex, normalise  # noqa: E402
from ml.noise import knn_indices, suspicion_components  # noqa: E402

N_TAGS = 28
NEIGHBOURS = 10


def flipped_labels(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    y = groups % N_TAGS
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), int(0.05 * len(y)), replace=False)
    noisy = y.copy()
    noisy[idx] = (noisy[idx] + rng.integers(1, N_TAGS, len(idx))) % N_TAGS
    return noisy, idx


def found_in_top(score: np.ndarray, flipped: np.ndarray) -> float:
    top = np.argsort(-score, kind="stable")[: len(flipped)]
    return round(float(np.isin(flipped, top).mean()), 4)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, round(time.perf_counter() - t, 2)


def numpy_knn(X: np.ndarray, m: int, block: int = 2048) -> np.ndarray:
    """The baseline: similarities block by block, argpartition over each n-wide row."""
    Xn = normalise(X)
    out = np.zeros((len(Xn), m), dtype=np.int64)
    for start in range(0, len(Xn), block):
        rows = np.arange(start, min(len(Xn), start + block))
        S = Xn[rows] @ Xn.T
        S[np.arange(len(rows)), rows] = -np.inf
        out[rows] = np.argpartition(-S, m - 1, axis=1)[:, :m]
    return out


def ivf_knn(X: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    sims, ids = VectorIndex.build(np.arange(len(X)), X, kind="ivf").search(X, m + 1)
    return ids[:, 1:], sims[:, 1:]  # (nearly always) itself first


def one_size(n: int) -> dict:
    X, groups = synth(n, 1280, 1000, seed=n, groups=True)
    y, flipped = flipped_labels(groups, seed=n)
    parts, whole_s = timed(suspicion_components, X, y, N_TAGS, k_folds=5, n_neighbors=NEIGHBOURS)
    head, l2_s = timed(train_head, X, y, N_TAGS, seed=0)
    _, oof_s = timed(out_of_fold_proba, X, y, N_TAGS, n_folds=5, seed=0, l2=head.l2)
    (idx, _), knn_s = timed(knn_indices, X, NEIGHBOURS)
    base, numpy_s = timed(numpy_knn, X, NEIGHBOURS)
    ivf, ivf_s = timed(ivf_knn, X, NEIGHBOURS)
    with_ivf = suspicion_components(X, y, N_TAGS, k_folds=5, n_neighbors=NEIGHBOURS, neighbours=ivf)
    return {
        "n": n, "score_s": whole_s, "l2_choice_s": l2_s, "oof_heads_s": oof_s, "knn_s": knn_s,
        "flipped_in_top5pct": found_in_top(parts["score"], flipped),
        "baseline_numpy_knn_s": numpy_s, "knn_speedup_vs_numpy": round(numpy_s / max(knn_s, 1e-9), 2),
        "same_neighbours_as_numpy": round(recall(idx, base), 4),
        "ivf_knn_s": ivf_s, "ivf_recall_at_10": round(recall(ivf[0], idx), 4),
        "ivf_flipped_in_top5pct": found_in_top(with_ivf["score"], flipped),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="3000,10000,40000", help="labels per run, comma-separated")
    ap.add_argument("--json", default=str(REPO / "bench/out/noise.json"))
    args = ap.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        r = one_size(n)
        rows.append(r)
        print(f"n={n:>6,}  score {r['score_s']:5.1f} s (L2 {r['l2_choice_s']:.1f}, heads {r['oof_heads_s']:.1f}, "
              f"neighbours {r['knn_s']:.1f})  flipped in top 5 % {r['flipped_in_top5pct']:.3f} | neighbours: "
              f"numpy {r['baseline_numpy_knn_s']:.1f} s ({r['knn_speedup_vs_numpy']}x, same "
              f"{r['same_neighbours_as_numpy']:.3f}), IVF {r['ivf_knn_s']:.1f} s (recall@10 "
              f"{r['ivf_recall_at_10']:.3f}, flipped in top 5 % {r['ivf_flipped_in_top5pct']:.3f})", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
