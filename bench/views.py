"""What TAGLOOP_VIEWS buys and costs in the product: the same photos embedded by the product's
embedder (`ml.multiview.make_embedder`, what imports and retrains call) with the default centre
crop and with a multi-view spec, in one run; then the product's head (`ml.heads.train_head`, as
`labeling.services.training` calls it: class-balanced, L2 by internal CV) on each.

    .venv/bin/python bench/views.py [--tasks fl27-28way,fl27-4way,shoes-3] [--views SPEC] [--n N]

Prints img/s with decode for both (and the slowdown), and accuracy / balanced accuracy /
macro-F1: 5-fold CV for the fl27 tasks (the folds of `ml.evaluate`), the given split for shoes.
No box crops, fine labels or blends here: those are benchmark recipes the product does not run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml.datasets import load_task  # noqa: E402
from ml.heads import train_head  # noqa: E402
from ml.metrics import balanced_accuracy, macro_f1  # noqa: E402
from ml.multiview import RECOMMENDED_VIEWS, crops_per_image, make_embedder  # noqa: E402


def embed(paths: list[str], backbone: str, views: str, cache: Path) -> tuple[np.ndarray, float]:
    emb = make_embedder(backbone, views, runtime="onnx", cache_dir=cache)
    emb.embed_paths(paths[:8])  # warm-up: ONNX session, thread pool
    t = time.perf_counter()
    r = emb.embed_paths(paths)
    dt = time.perf_counter() - t
    if r.errors:
        raise SystemExit(f"{len(r.errors)} files failed to embed, e.g. {next(iter(r.errors.values()))}")
    emb.close()
    return r.vectors, len(paths) / dt


def scores(X: np.ndarray, y: np.ndarray, n_classes: int, splits) -> tuple[float, float, float]:
    pred = np.full(len(y), -1)
    tested = np.zeros(len(y), bool)
    for tr, te in splits:
        head = train_head(X[tr], y[tr], n_classes, seed=0)
        pred[te] = head.predict_proba(X[te]).argmax(1)
        tested[te] = True
    yt, yp = y[tested], pred[tested]
    return float((yt == yp).mean()), balanced_accuracy(yt, yp, n_classes), macro_f1(yt, yp, n_classes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="fl27-28way,fl27-4way,shoes-3")
    ap.add_argument("--views", default=RECOMMENDED_VIEWS, help="the multi-view spec to compare")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--data", default=None, help="datasets folder (default ../shared/datasets)")
    ap.add_argument("--n", type=int, default=0, help="only the first N photos of each task (0: all)")
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="tagloop-bench-onnx-"))
    embedded: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
    rows = []
    for name in args.tasks.split(","):
        task = load_task(name, args.data)
        n = args.n or len(task.paths)
        keep = np.arange(min(n, len(task.paths)))
        splits = [(tr[tr < len(keep)], te[te < len(keep)]) for tr, te in task.splits]
        for views in ("center", args.views):
            key = (name.split("-")[0], views)  # the fl27 tasks share their photos
            if key not in embedded or len(embedded[key][0]) != len(keep):
                embedded[key] = embed([task.paths[i] for i in keep], args.backbone, views, cache)
            X, rate = embedded[key]
            acc, bal, f1 = scores(X, task.y[keep], task.n_classes, splits)
            rows.append((name, views, crops_per_image(views), len(keep), rate, acc, bal, f1))
            print(f"{name:11s} {views:38s} {rows[-1][2]:3d} crops  {len(keep):5d} photos  "
                  f"{rate:7.1f} img/s  acc {acc:.4f}  bal.acc {bal:.4f}  macro-F1 {f1:.4f}", flush=True)
    print("\n| task | views | crops/img | photos | img/s (decode + embed) | accuracy | balanced acc. | macro-F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, views, crops, n, rate, acc, bal, f1 in rows:
        print(f"| {name} | `{views}` | {crops} | {n} | {rate:.1f} | {acc:.4f} | {bal:.4f} | {f1:.4f} |")
    for name in args.tasks.split(","):
        base, multi = [r for r in rows if r[0] == name]
        print(f"{name}: {args.views} vs center: accuracy {multi[5] - base[5]:+.3f}, balanced acc. "
              f"{multi[6] - base[6]:+.3f}, {base[4] / multi[4]:.1f}x slower to embed")


if __name__ == "__main__":
    main()
