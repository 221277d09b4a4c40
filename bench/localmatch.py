"""What local-feature evidence (ml.localmatch) costs next to the CNN embedding, same photos.

    python bench/localmatch.py [--n 400] [--data DIR] [--workers 2]

FlickrLogos-27 photos (brand photos are templates, the rest queries). Prints, in one run:
CNN embedding img/s with decode (the product's ONNX Embedder; the baseline), SIFT keypoint
extraction img/s (no cache), the ratio, index build seconds for the templates, and ms per
scored query photo; then one JSON line. Accuracy is ml.evaluate's job (--local yes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml.datasets import load_task  # noqa: E402
from ml.embedding import Embedder  # noqa: E402
from ml.local_evidence import template_labels  # noqa: E402
from ml.localmatch import MatchIndex, extract_paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="photos (half templates, half queries)")
    ap.add_argument("--data", default=os.environ.get("TAGLOOP_DATASETS"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    task = load_task("fl27-28way", a.data)
    pick = np.random.default_rng(0).permutation(len(task.y))[: a.n]
    paths = [task.paths[i] for i in pick]
    for p in paths:  # page cache warm for both: we time decode + compute, not the disk
        Path(p).read_bytes()

    emb = Embedder()
    emb.embed_paths(paths[:16])  # load the model / start the pool outside the timing
    t = time.perf_counter()
    emb.embed_paths(paths)
    cnn = len(paths) / (time.perf_counter() - t)

    t = time.perf_counter()
    kps, problems = extract_paths(paths, a.workers)
    sift = len(paths) / (time.perf_counter() - t)

    lab, m = template_labels(task)
    half = len(pick) // 2
    labels = np.full(len(pick), -1)
    labels[:half] = lab[pick[:half]]
    t = time.perf_counter()
    index = MatchIndex(kps, labels, m)
    build = time.perf_counter() - t
    t = time.perf_counter()
    hits = sum(index.scores(kps[i]).max() >= 8 for i in range(half, len(pick)))
    query_ms = 1000 * (time.perf_counter() - t) / (len(pick) - half)

    out = {"photos": len(paths), "cnn_img_s": round(cnn, 1), "sift_img_s": round(sift, 1),
           "sift_vs_cnn": round(sift / cnn, 2), "templates": int((labels >= 0).sum()),
           "descriptors": int(index.index.ntotal), "index_build_s": round(build, 2),
           "query_ms": round(query_ms, 1), "queries_with_8_inliers": int(hits),
           "unreadable": len(problems), "cpus": os.cpu_count()}
    print(f"CNN embed (ONNX, decode incl.)  {cnn:8.1f} img/s   <- baseline")
    print(f"SIFT keypoints (decode incl.)   {sift:8.1f} img/s   = {sift / cnn:.2f}x the CNN rate")
    print(f"index of {out['templates']} template photos ({out['descriptors']} descriptors): {build:.2f} s")
    print(f"scoring one query photo: {query_ms:.1f} ms   ({hits} of {len(pick) - half} with >= 8 inliers)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
