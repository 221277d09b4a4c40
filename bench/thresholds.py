"""Multi-label decision thresholds on real embeddings: each tuning rule against a plain 0.5.

    .venv/bin/python bench/thresholds.py              # the table of docs/ml-results.md, ~1 min
    .venv/bin/python bench/thresholds.py --draws 24   # ~5 min

Features: cached EfficientNet-Lite0 centre crops (ml.features, ~/.cache/tagloop/features;
computed on first use, 1-2 min). Tasks: "8 tags" = shoes (shoe + its brand) and FlickrLogos
Nike / Adidas / Cocacola / Starbucks / Puma (logo + brand) and none (no tag); "27 tags" =
FlickrLogos brands one-hot, none as no tag. Per size, ``--draws`` random training sets (draw d:
permutation with seed d), the rest as test; micro-F1 on the test part, the mean over draws and
"(wN bM)": the draws where a rule is worse / better than 0.5.

Every rule thresholds the same head (the product's ``train_head``); they differ only in the
out-of-fold probabilities and the rule applied to them:

- ``5 pos`` / ``min 10``: the F1-best cut on the internal CV's out-of-fold probabilities as soon
  as a tag has 5 / 10 positives and negatives (the first rules);
- ``before``: the same with 50 and shrunk toward 0.5 by m / (m + 50) (the rule until this bench);
- ``(a) refit``: ``before`` on out-of-fold probabilities of fold heads refit alone at the chosen
  strength (``ml.head_fit.threshold_oof``) instead of the CV's 30 joint iterations;
- ``(b) scale``: ``before``'s cut scaled in logit space by the final head's in-sample logit
  spread over the out-of-fold one (the out-of-fold heads are less sure);
- ``(c) gate``: a cut moves only if the rows it moves make F1 rise with a one-sided binomial
  p < 0.001 (``ml.decision.f1_gain_p_value``), from 20 examples, shrunk; on the CV's probabilities;
- ``now``: the product's thresholds (``train_head``): (c) on (a)'s probabilities.

A second table repeats this on unweighted sigmoids (``class_weight=None``): there 0.5 is not the
equal-prior cut and the F1-best cut of a rare tag is clearly lower, so a rule that never moves
would show it. Writes bench/out/thresholds.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml.datasets import load_task  # noqa: E402
from ml.decision import GAIN_ALPHA, tune_tag_thresholds  # noqa: E402
from ml.features import make_store, spec_features  # noqa: E402
from ml.head_fit import L2_GRID_FACTORS, cross_validate, default_l2, learnable, threshold_oof  # noqa: E402
from ml.heads import LinearHead, shrunk_scale, torch_threads, train_head  # noqa: E402
from ml.metrics import multilabel_metrics  # noqa: E402

FL_BRANDS = ("Adidas", "Nike", "Cocacola", "Starbucks", "Puma")
TAGS_8 = ["shoe", "logo", "adidas", "converse", "nike", "cocacola", "puma", "starbucks"]


def features(task) -> np.ndarray:
    store = make_store("efficientnet-lite0")
    store.ensure(task.paths, task.shas, ["center"], task.boxes)
    return spec_features(store, task.shas, "center:mean")


def load_tasks(data: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    shoes, fl = load_task("shoes-3", data), load_task("fl27-28way", data)
    Xs, Xf = features(shoes), features(fl)
    Ys = np.zeros((len(shoes.y), 8), np.int64)
    Ys[:, 0] = 1
    for c, brand in enumerate(shoes.labels):
        Ys[shoes.y == c, TAGS_8.index(brand)] = 1
    names = np.array(fl.labels)[fl.y]
    keep = np.isin(names, (*FL_BRANDS, "none"))
    Yf = np.zeros((int(keep.sum()), 8), np.int64)
    for i, name in enumerate(names[keep]):
        if name != "none":
            Yf[i, [1, TAGS_8.index(name.lower())]] = 1
    brands = [c for c, name in enumerate(fl.labels) if name != "none"]
    Y27 = (fl.y[:, None] == np.array(brands)[None, :]).astype(np.int64)
    return {"8 tags": (np.concatenate([Xs, Xf[keep]]), np.concatenate([Ys, Yf])), "27 tags": (Xf, Y27)}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def scaled(t: np.ndarray, head: LinearHead, X: np.ndarray, oof: np.ndarray, learned: np.ndarray) -> np.ndarray:
    """(b): a tuned cut's logit times (final head's in-sample logit spread / out-of-fold spread)."""
    z_in = head.decision_function(X)[:, learned]
    ok = ~np.isnan(oof).any(axis=1)
    s = z_in.std(axis=0) / np.maximum(logit(oof[ok]).std(axis=0), 1e-6)
    return 1 / (1 + np.exp(-s * logit(t)))


def draw_thresholds(X: np.ndarray, Y: np.ndarray, cw: str | None) -> tuple[LinearHead, dict[str, np.ndarray]]:
    """The product's head on (X, Y) and every rule's thresholds (k,) for it."""
    k = Y.shape[1]
    head = train_head(X, Y, k, multilabel=True, class_weight=cw)
    learned = learnable(Y, k, True)
    with torch_threads(1):  # the out-of-fold probabilities train_head used, recomputed
        Xs = torch.from_numpy((X - X.mean(axis=0)) / shrunk_scale(X))
        grid = [default_l2(len(Y)) * f for f in L2_GRID_FACTORS]
        l2, cv_oof = cross_validate(Xs, Y, True, cw, learned, grid, 0)
        refit_oof = threshold_oof(Xs, Y, cw, learned, l2, 0)
    assert l2 == head.l2
    Yl = Y[:, learned]

    def on(oof: np.ndarray | None, **kw) -> np.ndarray:
        t = np.full(k, 0.5)
        t[learned] = tune_tag_thresholds(oof, Yl, **kw)
        return t

    before = dict(min_examples=50, alpha=None)
    rules = {
        "0.5": np.full(k, 0.5),
        "5 pos": on(cv_oof, min_examples=5, alpha=None, shrink=0),
        "min 10": on(cv_oof, min_examples=10, alpha=None, shrink=0),
        "before": on(cv_oof, **before),
        "(a) refit": on(refit_oof, **before),
        "(b) scale": on(cv_oof, **before),
        "(c) gate": on(cv_oof, alpha=GAIN_ALPHA),
        "now": head.thresholds,
    }
    if cv_oof is not None:
        rules["(b) scale"][learned] = scaled(rules["before"][learned], head, X, cv_oof, learned)
    return head, rules


def one_size(X: np.ndarray, Y: np.ndarray, n: int, draws: int, cw: str | None) -> dict[str, dict]:
    scores: dict[str, list[float]] = {}
    moved: dict[str, int] = {}
    for d in range(draws):
        perm = np.random.default_rng(d).permutation(len(Y))
        tr, te = perm[:n], perm[n:]
        head, rules = draw_thresholds(X[tr], Y[tr], cw)
        P = head.predict_proba(X[te])
        for name, t in rules.items():
            m = multilabel_metrics(Y[te], P, t, [str(j) for j in range(Y.shape[1])])
            scores.setdefault(name, []).append(m["micro_f1"])
            moved[name] = moved.get(name, 0) + int((t != 0.5).sum())
    base = np.array(scores["0.5"])
    return {name: {"micro_f1": float(np.mean(v)), "worse": int((np.array(v) < base - 1e-12).sum()),
                   "better": int((np.array(v) > base + 1e-12).sum()), "tags_moved": moved[name],
                   "per_draw": [round(x, 5) for x in v]}
            for name, v in scores.items()}


def table(title: str, rows: dict[str, dict[str, dict]], draws: int) -> None:
    names = list(next(iter(rows.values())))
    print(f"\n{title} (micro-F1, mean of {draws} draws; wN bM = draws worse / better than 0.5)")
    print("| task, labels | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    fmt: Callable[[str, dict], str] = lambda n, r: (
        f"{r['micro_f1']:.4f}" if n == "0.5" else f"{r['micro_f1']:.4f} (w{r['worse']} b{r['better']})")
    for key, res in rows.items():
        print(f"| {key} | " + " | ".join(fmt(n, res[n]) for n in names) + " |")
    print("tags moved from 0.5 (summed over draws): " + "; ".join(
        f"{key}: " + " ".join(f"{n}={res[n]['tags_moved']}" for n in names[1:]) for key, res in rows.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--sizes", default="80,150,300,600", help="training labels per draw")
    ap.add_argument("--no-unweighted", action="store_true", help="skip the class_weight=None table")
    ap.add_argument("--data", default=None, help="datasets folder (default ../shared/datasets)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    tasks = load_tasks(args.data)
    print(f"features ready in {time.perf_counter() - t0:.0f} s: " +
          ", ".join(f"{name} {Y.shape[0]} photos" for name, (_, Y) in tasks.items()))
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict = {"draws": args.draws, "sizes": sizes, "tables": {}}
    for cw, title in (("balanced", "class-balanced sigmoids (the product)"), (None, "unweighted sigmoids")):
        if cw is None and args.no_unweighted:
            continue
        t = time.perf_counter()
        rows = {f"{name}, {n}": one_size(X, Y, n, args.draws, cw) for name, (X, Y) in tasks.items() for n in sizes}
        table(title, rows, args.draws)
        out["tables"][str(cw)] = rows
        print(f"({time.perf_counter() - t:.0f} s)")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\ntotal {out['seconds']:.0f} s")
    path = REPO / "bench" / "out" / "thresholds.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
