"""Simulated human-in-the-loop labelling: how many labels does each selection strategy need?

    python -m ml.simulate --task shoes-3 --strategies random,entropy,margin,diverse --json out.json

The "human" is the ground truth of a task. Starting from a small random seed set, each
round retrains a linear head (ml.heads.train_head) on the labelled images, lets a strategy
(ml.selection.select_batch) pick the next batch from the unlabelled pool, and "labels" it.
Accuracy is measured on held-out images the loop never sees (shoes: the test split;
fl27: fold 0's test part). Repeated over several seeds and averaged, since a single
random seed set makes strategy comparisons noisy.

`labels_to_95pct`: the labels needed to reach 95 % of the accuracy of a head trained on
the whole pool (every label given) -- the product's "how much labelling is enough" figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ml.datasets import TASKS, load_task
from ml.features import make_store, spec_features, spec_views
from ml.heads import train_head
from ml.selection import select_batch

DEFAULT_STRATEGIES = ("random", "entropy", "margin", "diverse")


def _acc(head, X: np.ndarray, y: np.ndarray) -> float:
    return float((head.predict_proba(X).argmax(1) == y).mean())


def run_loop(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
             n_classes: int, strategy: str, *, seed_size: int, batch: int, rounds: int,
             seed: int) -> list[dict]:
    """One simulated labelling session; returns the curve [{labels, accuracy}]."""
    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(len(y), size=min(seed_size, len(y)), replace=False))
    curve = []
    for r in range(rounds + 1):
        head = train_head(X[labelled], y[labelled], n_classes, seed=seed)
        curve.append({"labels": len(labelled), "accuracy": _acc(head, X_test, y_test)})
        pool = np.setdiff1d(np.arange(len(y)), labelled)
        if r == rounds or not len(pool):
            break
        P = head.predict_proba(X[pool])
        picked = select_batch(P, X[pool], min(batch, len(pool)), strategy, seed + r)
        labelled += [int(i) for i in pool[np.asarray(picked, dtype=np.int64)]]
    return curve


def labels_to_reach(curve: list[dict], target: float) -> int | None:
    """First label count whose (mean) accuracy reaches target; None = not within budget."""
    return next((c["labels"] for c in curve if c["accuracy"] >= target), None)


def simulate(task_name: str, strategies: list[str], *, seed_size: int = 10, batch: int = 10,
             rounds: int = 30, repeats: int = 3, spec: str = "center:mean",
             data_dir: str | None = None, cache_dir: str | None = None,
             backbone: str = "efficientnet-lite0") -> dict:
    t0 = time.time()
    task = load_task(task_name, data_dir)
    store = make_store(backbone, cache_dir=cache_dir)
    store.ensure(task.paths, task.shas, spec_views(spec), task.boxes)
    X = spec_features(store, task.shas, spec)
    tr, te = task.splits[0]
    full = train_head(X[tr], task.y[tr], task.n_classes, seed=0)
    full_acc = _acc(full, X[te], task.y[te])
    target = 0.95 * full_acc
    out: dict = {"task": task_name, "backbone": backbone, "features": spec,
                 "pool": int(len(tr)), "n_test": int(len(te)), "seed_size": seed_size,
                 "batch": batch, "rounds": rounds, "repeats": repeats,
                 "all_labels_accuracy": full_acc, "target_95pct": target, "strategies": {}}
    jobs = [(s, k) for s in strategies for k in range(repeats)]
    runs: dict[str, list[list[dict]]] = {s: [] for s in strategies}
    for s, k in tqdm(jobs, desc="simulate", unit="run", file=sys.stderr):
        # the same seed set per repeat for every strategy: a paired comparison
        runs[s].append(run_loop(X[tr], task.y[tr], X[te], task.y[te], task.n_classes, s,
                                seed_size=seed_size, batch=batch, rounds=rounds, seed=k))
    for s in strategies:
        n_points = min(len(c) for c in runs[s])
        curve = [{"labels": runs[s][0][i]["labels"],
                  "accuracy": float(np.mean([c[i]["accuracy"] for c in runs[s]])),
                  "accuracy_std": float(np.std([c[i]["accuracy"] for c in runs[s]]))}
                 for i in range(n_points)]
        out["strategies"][s] = {"curve": curve, "labels_to_95pct": labels_to_reach(curve, target),
                                "final_accuracy": curve[-1]["accuracy"],
                                "mean_accuracy": float(np.mean([c["accuracy"] for c in curve]))}
    base = out["strategies"].get("random", {}).get("labels_to_95pct")
    for s, r in out["strategies"].items():
        n = r["labels_to_95pct"]
        # None when either never reached the target within the budget
        r["labels_vs_random"] = (n / base) if (n and base) else None
    ranked = [s for s in strategies if s != "random"]
    out["winner"] = min(ranked, key=lambda s: (out["strategies"][s]["labels_to_95pct"] or 10**9,
                                               -out["strategies"][s]["mean_accuracy"]),
                        default=None)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def plot(result: dict, png: str) -> bool:
    """Accuracy-vs-labels plot; False (and nothing written) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, r in result["strategies"].items():
        ax.plot([c["labels"] for c in r["curve"]], [c["accuracy"] for c in r["curve"]], label=s)
    ax.axhline(result["target_95pct"], ls="--", c="grey", label="95 % of all-labels acc.")
    ax.set(xlabel="labels", ylabel="test accuracy", title=result["task"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ml.simulate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    ap.add_argument("--seed-size", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--features", default="center:mean", help="feature spec (ml.features)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--data")
    ap.add_argument("--cache")
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot", help="PNG path (needs matplotlib; skipped if not installed)")
    a = ap.parse_args(argv)
    r = simulate(a.task, [s.strip() for s in a.strategies.split(",") if s.strip()],
                 seed_size=a.seed_size, batch=a.batch, rounds=a.rounds, repeats=a.repeats,
                 spec=a.features, data_dir=a.data, cache_dir=a.cache, backbone=a.backbone)
    r["command"] = "python -m ml.simulate " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.plot:
        r["plot"] = a.plot if plot(r, a.plot) else None
        if r["plot"] is None:
            print("matplotlib not installed: no plot written", file=sys.stderr)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(r, indent=1))
    print(f"{r['task']}: all-labels acc {r['all_labels_accuracy']:.3f}, "
          f"target {r['target_95pct']:.3f}; winner: {r['winner']}")
    print("| strategy | labels to 95 % | vs random | final acc | mean acc over curve |")
    print("|---|---|---|---|---|")
    for s, v in r["strategies"].items():
        ratio = f"{v['labels_vs_random']:.2f}" if v["labels_vs_random"] else "-"
        print(f"| {s} | {v['labels_to_95pct'] or '> budget'} | {ratio} | "
              f"{v['final_accuracy']:.3f} | {v['mean_accuracy']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
