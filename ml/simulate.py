"""Simulated human-in-the-loop labelling: how many labels does each selection strategy need?

    python -m ml.simulate --task shoes-3 --strategies random,margin,diverse --json out.json

The "human" is the ground truth of a task. Starting from a seed set of `--seed-per-class`
random items per class, each round retrains a linear head (ml.heads.train_head) on the
labelled images, lets a strategy (ml.selection.select_batch) pick the next `--batch` items
from the unlabelled pool, and "labels" them, until the whole pool is labelled (or
`--max-labels`). Accuracy is measured on held-out images the loop never sees (shoes: the
test split; fl27: repeat r uses CV fold r's test part and the other folds as its pool).
Repeated and averaged, since one seed set makes strategy comparisons noisy; every strategy
gets the same seed sets (a paired comparison).

`labels_to_95pct`: the labels needed until the mean curve first reaches 95 % of the accuracy
of a head trained on the whole pool (every label given) -- the product's "how much labelling
is enough" figure; `labels_to_95pct_stays`: from where it never drops below again.
`labels_vs_random`: that count divided by random's (lower is better; None = not reached).

`--local yes`: the model in the loop is what a taxonomy with local matching on serves, the head
fused with SIFT matches to the labels so far (LocalLoop; ml.match_table keeps that affordable).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from tqdm import tqdm

from ml.atomic import unwritable, write_json
from ml.datasets import TASKS, load_task, run_problem, say_flagged
from ml.features import default_cache_dir, make_store, spec_features, spec_views
from ml.heads import train_head
from ml.local_evidence import choose_templates, weight_for
from ml.localmatch import cached_keypoints, fuse
from ml.match_table import MatchTable
from ml.savings import labels_to_reach
from ml.selection import STRATEGIES, select_batch

DEFAULT_STRATEGIES = ("random", "entropy", "margin", "diverse")


def _full_accuracy(X: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, n_classes: int,
                   local: LocalLoop | None) -> float:
    """Test accuracy of the head trained on the whole pool (with the matches, when on)."""
    P = train_head(X[tr], y[tr], n_classes, seed=0).predict_proba(X[te])
    if local is not None:
        [P] = local.fuse(X[tr], y[tr], tr, [(P, te)])
    return float((P.argmax(1) == y[te]).mean())


def seed_set(y: np.ndarray, n_classes: int, per_class: int, rng: np.random.Generator) -> list[int]:
    """`per_class` random items of every class: the product asks for a few examples per tag
    before it trains anything, so the loop starts from there, not from an arbitrary sample."""
    out: list[int] = []
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        out += [int(i) for i in rng.choice(members, size=min(per_class, len(members)), replace=False)]
    return out


class LocalLoop:
    """The product's local matching (labeling.services.localmatch.fit) inside the loop. Each
    round: the app's templates (ml.local_evidence.choose_templates) and weight (``weight_for``,
    on the labels' leave-one-out scores), and the test and pool probabilities fused with it --
    so the strategies pick from, and are scored on, what the product would show."""

    def __init__(self, table: MatchTable, n_classes: int) -> None:
        self.table, self.n_classes = table, n_classes
        self.weights: list[float] = []

    def fuse(self, X_lab: np.ndarray, y_lab: np.ndarray, ids_lab: np.ndarray,
             parts: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """``ids_*``: rows of the table; ``parts``: (head probabilities, their ids) to fuse."""
        tpl = choose_templates(y_lab, np.arange(len(y_lab)))
        labels = np.full(self.table.n_images, -1)
        labels[ids_lab[tpl]] = y_lab[tpl]
        S = self.table.scores(labels, self.n_classes)
        w, _ = weight_for(X_lab, y_lab, self.n_classes, S[ids_lab])
        self.weights.append(w)
        return [fuse(P, S[ids], w) for P, ids in parts]


def run_loop(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
             n_classes: int, strategy: str, *, seed_per_class: int, batch: int,
             max_labels: int | None, seed: int, local: LocalLoop | None = None,
             ids: np.ndarray | None = None, test_ids: np.ndarray | None = None) -> list[dict]:
    """One simulated labelling session, until the pool (or max_labels) is used up;
    returns the curve [{labels, accuracy}]. ``local``: fuse its evidence each round (``ids`` /
    ``test_ids``: the table rows of the pool and test items)."""
    rng = np.random.default_rng(seed)
    labelled = seed_set(y, n_classes, seed_per_class, rng)
    limit = len(y) if max_labels is None else min(max_labels, len(y))
    curve = []
    while True:
        head = train_head(X[labelled], y[labelled], n_classes, seed=seed)
        pool = np.setdiff1d(np.arange(len(y)), labelled)
        P_test, P = head.predict_proba(X_test), head.predict_proba(X[pool])
        if local is not None:
            lab = np.asarray(labelled)
            P_test, P = local.fuse(X[lab], y[lab], ids[lab], [(P_test, test_ids), (P, ids[pool])])
        curve.append({"labels": len(labelled), "accuracy": float((P_test.argmax(1) == y_test).mean())})
        if len(labelled) >= limit or not len(pool):
            break
        k = min(batch, len(pool), limit - len(labelled))
        picked = select_batch(P, X[pool], k, strategy, seed * 100_003 + len(labelled))
        labelled += [int(i) for i in pool[np.asarray(picked, dtype=np.int64)]]
    return curve


def labels_to_stay(curve: list[dict], target: float) -> int | None:
    """First label count from which the (mean) accuracy never drops below target again:
    a stricter reading than labels_to_reach, robust to one lucky point on a noisy curve."""
    below = [i for i, c in enumerate(curve) if c["accuracy"] < target]
    i = below[-1] + 1 if below else 0
    return curve[i]["labels"] if i < len(curve) else None


def _summary(curve: list[dict], target: float) -> dict:
    return {"curve": curve, "labels_to_95pct": labels_to_reach(curve, target),
            "labels_to_95pct_stays": labels_to_stay(curve, target),
            "final_accuracy": curve[-1]["accuracy"],
            "mean_accuracy": float(np.mean([c["accuracy"] for c in curve]))}


def simulate(task_name: str, strategies: list[str], *, seed_per_class: int = 1, batch: int = 10,
             max_labels: int | None = None, repeats: int = 3, spec: str = "center:mean",
             data_dir: str | None = None, cache_dir: str | None = None,
             backbone: str = "efficientnet-lite0", local: bool = False) -> dict:
    """Repeat r starts from seed set r and is evaluated on split r (fl27: CV fold r's test
    part, trained from the other folds' pool; shoes: the given test split every time)."""
    t0 = time.time()
    task = load_task(task_name, data_dir)
    say_flagged(task)
    store = make_store(backbone, cache_dir=cache_dir)
    store.ensure(task.paths, task.shas, spec_views(spec), task.boxes)
    X = spec_features(store, task.shas, spec)
    splits = [task.splits[r % len(task.splits)] for r in range(repeats)]
    matcher = None
    if local:
        kps = cached_keypoints(task.paths, task.shas, cache_dir or default_cache_dir())
        print("matching every photo's keypoints against the others once ...", file=sys.stderr)
        matcher = LocalLoop(MatchTable(kps), task.n_classes)
    # the reference: a head trained on the whole pool of the same split
    full = [_full_accuracy(X, task.y, tr, te, task.n_classes, matcher) for tr, te in splits]
    target = 0.95 * float(np.mean(full))
    out: dict = {"task": task_name, "backbone": backbone, "features": spec,
                 "pool": int(np.mean([len(tr) for tr, _ in splits])),
                 "n_test": int(np.mean([len(te) for _, te in splits])),
                 "seed_per_class": seed_per_class, "batch": batch, "max_labels": max_labels,
                 "repeats": repeats, "local_matching": local, "all_labels_accuracy": float(np.mean(full)),
                 "all_labels_accuracy_per_repeat": full, "target_95pct": target,
                 "strategies": {}}
    jobs = [(s, k) for s in strategies for k in range(repeats)]
    runs: dict[str, list[list[dict]]] = {s: [] for s in strategies}
    for s, k in tqdm(jobs, desc="simulate", unit="run", file=sys.stderr):
        tr, te = splits[k]
        # the same seed set per repeat for every strategy: a paired comparison
        runs[s].append(run_loop(X[tr], task.y[tr], X[te], task.y[te], task.n_classes, s,
                                seed_per_class=seed_per_class, batch=batch,
                                max_labels=max_labels, seed=k, local=matcher, ids=tr, test_ids=te))
    for s in strategies:
        n_points = min(len(c) for c in runs[s])  # fl27 folds' pools differ by a few items
        curve = [{"labels": runs[s][0][i]["labels"],
                  "accuracy": float(np.mean([c[i]["accuracy"] for c in runs[s]])),
                  "accuracy_std": float(np.std([c[i]["accuracy"] for c in runs[s]]))}
                 for i in range(n_points)]
        out["strategies"][s] = _summary(curve, target)
    for key in ("labels_to_95pct", "labels_to_95pct_stays"):
        base = out["strategies"].get("random", {}).get(key)
        for r in out["strategies"].values():
            # None when either never reached the target within the budget
            r[key.replace("labels_to_95pct", "labels_vs_random")] = (
                r[key] / base if (r[key] and base) else None)
    ranked = [s for s in strategies if s != "random"]
    out["winner"] = min(ranked, key=lambda s: (out["strategies"][s]["labels_to_95pct"] or 10**9,
                                               -out["strategies"][s]["mean_accuracy"]),
                        default=None)
    if matcher is not None:
        out["local_weights"] = {"median": float(np.median(matcher.weights)),
                                "zero_share": float(np.mean(np.asarray(matcher.weights) == 0))}
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
    ap.add_argument("--seed-per-class", type=int, default=1, help="labelled items per class to start")
    ap.add_argument("--batch", type=int, default=10, help="labels per round (one review page)")
    ap.add_argument("--max-labels", type=int, help="stop there (default: the whole pool)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--features", default="center:mean", help="feature spec (ml.features)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--local", choices=["yes", "no"], default="no",
                    help="fuse SIFT matches to the labelled photos each round, as the product does "
                         "for a taxonomy with local matching on (ml.localmatch)")
    ap.add_argument("--data")
    ap.add_argument("--cache")
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot", help="PNG path (needs matplotlib; skipped if not installed)")
    a = ap.parse_args(argv)
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    # the user's mistakes, said before minutes of embedding and simulating
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        ap.error(f"--strategies: {', '.join(unknown) or 'none given'}; choose from {', '.join(STRATEGIES)}")
    if problem := run_problem(a.task, a.data, a.json):
        ap.error(problem)
    if a.plot and (problem := unwritable(a.plot)):
        ap.error(f"--plot: {problem}")
    r = simulate(a.task, strategies,
                 seed_per_class=a.seed_per_class, batch=a.batch, max_labels=a.max_labels,
                 repeats=a.repeats,
                 spec=a.features, data_dir=a.data, cache_dir=a.cache, backbone=a.backbone,
                 local=a.local == "yes")
    r["command"] = "python -m ml.simulate " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.plot:
        r["plot"] = a.plot if plot(r, a.plot) else None
        if r["plot"] is None:
            print("matplotlib not installed: no plot written", file=sys.stderr)
    write_json(a.json, r)
    print(f"{r['task']}: all-labels acc {r['all_labels_accuracy']:.3f}, "
          f"target {r['target_95pct']:.3f}; winner: {r['winner']}")
    print("| strategy | labels to 95 % | vs random | labels to stay >= 95 % | vs random | "
          "final acc | mean acc over curve |")
    print("|---|---|---|---|---|---|---|")

    def ratio(x: float | None) -> str:
        return f"{x:.2f}" if x else "-"

    for s, v in r["strategies"].items():
        print(f"| {s} | {v['labels_to_95pct'] or '> budget'} | {ratio(v['labels_vs_random'])} | "
              f"{v['labels_to_95pct_stays'] or '> budget'} | {ratio(v['labels_vs_random_stays'])} | "
              f"{v['final_accuracy']:.3f} | {v['mean_accuracy']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
