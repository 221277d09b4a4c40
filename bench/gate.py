"""Benchmark of the promotion check: which rule keeps the better model live as labels arrive?

    .venv/bin/python bench/gate.py                                   # shoes-3, ~4 min
    .venv/bin/python bench/gate.py --task fl27-28way --max-labels 600   # ~15 min

The labelling loop as the product runs it, on cached real embeddings (EfficientNet-Lite0,
centre crop): an operator labels 20 photos at a time (the default retrain threshold) in the
queue's order (``--strategy``, default the product's ``diverse``); one label in five is held
out by its photo's sha256 (``ml.promotion.holdout_split``, as the product: a class whose only
labels are held out trains on them; below 10 held-out labels the product promotes without a
comparison; unlike the product, near-duplicate photos are not grouped); after each 20 a head is trained on the rest and
compared with the live model on the held-out labels by each rule, each rule with its own live
model. The truth is the task's test split, never labelled. Printed per rule:

- the live model's mean test accuracy, and how far it trails the newest model: the mean gap
  and the share of retrains where the live model is 2+ points worse (a better model refused)
  or 2+ points better (a worse one promoted);
- a model trained on the same labels with ``--flip`` of them changed to another tag, compared
  with the previous model at each retrain: the share of them each rule refuses, by held-out
  size.

Rules: ``accuracy >=`` (the product's rule before round 13), a sign test on right/wrong
(McNemar, one-sided, p < 0.05), ``always``, and ``ml.promotion.compare`` (the product's).
Writes bench/out/gate.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import binomtest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml.datasets import load_task  # noqa: E402
from ml.features import make_store, spec_features, spec_views  # noqa: E402
from ml.heads import train_head  # noqa: E402
from ml.promotion import can_compare, compare, holdout_split, is_holdout  # noqa: E402
from ml.selection import select_batch  # noqa: E402
from ml.simulate import seed_set  # noqa: E402

BATCH = 20  # Taxonomy.retrain_threshold's default

Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], bool]  # (P_new, P_live, y) -> promote?


def _right(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    return P.argmax(1) == y


def _sign_test(P_new: np.ndarray, P_live: np.ndarray, y: np.ndarray) -> bool:
    lost = int((_right(P_live, y) & ~_right(P_new, y)).sum())
    won = int((_right(P_new, y) & ~_right(P_live, y)).sum())
    return lost + won == 0 or binomtest(lost, lost + won, 0.5, alternative="greater").pvalue >= 0.05


RULES: dict[str, Rule] = {
    "accuracy >= (before)": lambda P_new, P_live, y: _right(P_new, y).mean() >= _right(P_live, y).mean(),
    "sign test 0.05": _sign_test,
    "always": lambda *_: True,
    "log-loss t-test 0.05 (product)": lambda P_new, P_live, y: compare(P_new, P_live, y).promote,
}


def flip(y: np.ndarray, n_classes: int, share: float, rng: np.random.Generator) -> np.ndarray:
    out = y.copy()
    hit = rng.random(len(y)) < share
    out[hit] = (out[hit] + rng.integers(1, n_classes, hit.sum())) % n_classes
    return out


def one_order(X: np.ndarray, y: np.ndarray, held_out: np.ndarray, n_classes: int, pool: np.ndarray,
              test: np.ndarray, k: int, args: argparse.Namespace) -> dict:
    """One labelling session: per retrain, each rule's live test accuracy and the newest's."""
    rng = np.random.default_rng(k)
    labelled = [int(i) for i in pool[seed_set(y[pool], n_classes, 1, rng)]]
    live: dict[str, tuple[np.ndarray, float] | None] = {r: None for r in RULES}
    out: dict = {"newest": [], "live": {r: [] for r in RULES}, "refused_bad": {r: [] for r in RULES},
                 "held_out": []}
    previous = None
    while len(labelled) < args.max_labels:
        rest = np.setdiff1d(pool, labelled)
        if args.strategy == "random":
            add = rng.choice(rest, BATCH, replace=False)
        else:
            P_rest = train_head(X[labelled], y[labelled], n_classes, seed=k).predict_proba(X[rest])
            add = rest[np.asarray(select_batch(P_rest, X[rest], BATCH, args.strategy, k * 1000 + len(labelled)))]
        labelled += [int(i) for i in add]
        L = np.asarray(labelled)
        # the product's split: a class whose only labels are in the bucket trains on them
        bucket, _, _ = holdout_split(held_out[L], y[L][:, None] == np.arange(n_classes))
        held = L[bucket]
        compared = can_compare(len(held))
        train = L[~bucket] if compared else L
        P = train_head(X[train], y[train], n_classes, seed=k).predict_proba(X)
        acc = float(_right(P[test], y[test]).mean())
        out["newest"].append(acc)
        for name, rule in RULES.items():
            cur = live[name]
            # as the product: no comparison with a live model that was trained on every label
            # (held-out ones included) because its held-out set was too small
            if cur is None or not compared or not cur[2] or rule(P[held], cur[0][held], y[held]):
                live[name] = (P, acc, compared)
            out["live"][name].append(live[name][1])
        if previous is not None and compared:
            # the same labels with a share changed: compared with the model before it
            P_bad = train_head(X[train], flip(y[train], n_classes, args.flip, rng), n_classes, seed=k).predict_proba(X)
            out["held_out"].append(len(held))
            out.setdefault("bad_gap", []).append(previous[1] - float(_right(P_bad[test], y[test]).mean()))
            for name, rule in RULES.items():
                out["refused_bad"][name].append(previous[2] and not rule(P_bad[held], previous[0][held], y[held]))
        previous = (P, acc, compared)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="shoes-3")
    ap.add_argument("--data", default=None)
    ap.add_argument("--strategy", default="diverse", choices=["diverse", "random", "entropy", "margin"])
    ap.add_argument("--orders", type=int, default=10, help="labelling sessions (seed sets, orders)")
    ap.add_argument("--max-labels", type=int, default=400)
    ap.add_argument("--flip", type=float, default=0.3, help="share of labels changed in the damaged model")
    args = ap.parse_args()
    t0 = time.time()
    task = load_task(args.task, args.data)
    store = make_store("efficientnet-lite0")
    store.ensure(task.paths, task.shas, spec_views("center:mean"), task.boxes)
    X = spec_features(store, task.shas, "center:mean")
    held_out = np.array([is_holdout(s) for s in task.shas])
    runs = []
    for k in range(args.orders):
        pool, test = task.splits[k % len(task.splits)]
        runs.append(one_order(X, task.y, held_out, task.n_classes, pool, test, k, args))
        print(f"order {k + 1}/{args.orders} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    n = min(len(r["newest"]) for r in runs)
    newest = np.array([r["newest"][:n] for r in runs])
    held = np.concatenate([r["held_out"] for r in runs])
    result: dict = {"task": args.task, "strategy": args.strategy, "orders": args.orders, "retrains": n,
                    "max_labels": args.max_labels, "newest_accuracy": round(float(newest.mean()), 4),
                    "flip": args.flip, "damaged_gap": round(float(np.mean(np.concatenate([r["bad_gap"] for r in runs]))), 4),
                    "rules": {}}
    print(f"\n{args.task}, {args.strategy} order, {args.orders} sessions x {n} retrains (20 labels each), "
          f"newest model's test accuracy {newest.mean():.4f}; damaged model ({args.flip:.0%} labels changed) "
          f"{result['damaged_gap']:.3f} below the model before it")
    print(f"{'rule':32s} {'live acc':>8s} {'gap':>7s} {'2+ worse':>8s} {'2+ better':>9s} | refuses damaged: all, <40 held out, >=40")
    for name in RULES:
        live = np.array([r["live"][name][:n] for r in runs])
        gap = newest - live
        refused = np.concatenate([r["refused_bad"][name] for r in runs]).astype(bool)
        row = {"live_accuracy": round(float(live.mean()), 4), "mean_gap": round(float(gap.mean()), 4),
               "live_2pt_worse": round(float((gap >= 0.02).mean()), 4),
               "live_2pt_better": round(float((gap <= -0.02).mean()), 4),
               "refuses_damaged": round(float(refused.mean()), 4),
               "refuses_damaged_small": round(float(refused[held < 40].mean()), 4) if (held < 40).any() else None,
               "refuses_damaged_large": round(float(refused[held >= 40].mean()), 4) if (held >= 40).any() else None}
        result["rules"][name] = row
        fmt = lambda v: "  -  " if v is None else f"{v:5.1%}"  # noqa: E731
        print(f"{name:32s} {row['live_accuracy']:8.4f} {row['mean_gap']:+7.4f} {row['live_2pt_worse']:8.1%} "
              f"{row['live_2pt_better']:9.1%} | {fmt(row['refuses_damaged'])} {fmt(row['refuses_damaged_small'])} "
              f"{fmt(row['refuses_damaged_large'])}")
    result["seconds"] = round(time.time() - t0, 1)
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "gate.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
