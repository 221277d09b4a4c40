"""Benchmark CLI: measure a method on a task, print a table, write JSON.

    python -m ml.evaluate --task fl27-28way --method search --json out.json

Methods
- ``head``      linear head (ml.heads.train_head) on pooled features of one spec
                (default ``center:mean`` = the baseline: global center crop).
- ``multicrop`` the same head on multi-view features (tiles at higher resolution, flip,
                full image) + annotated box crops as extra training rows (training folds only).
- ``search``    per outer fold, picks the spec/box option -- and the backbone, when
                ``--backbone`` lists several candidates separated by commas -- by an inner
                stratified CV on the training part only (the test fold is never looked at),
                then retrains.
- ``finetune``  ml.finetune on each training part (its own validation split inside it).

``--blend FILE`` (head methods): average the head's test-fold probabilities with a saved
out-of-fold run (``--save-proba`` of ``--method finetune``, here or on a GPU): a fine-tuned
network and a linear head on frozen features make different mistakes.

``--local yes`` (head methods): add RootSIFT matches that one similarity transform verifies
(ml.localmatch) to the training photos as per-class evidence; its weight comes from the
training part (leave-one-out scores + inner out-of-fold head probabilities).

fl27 tasks: 5-fold CV over deduplicated samples; metrics on the concatenated out-of-fold
predictions. shoes-3: the given train/test split.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

import numpy as np
from sklearn.model_selection import StratifiedKFold

from ml.atomic import write_json
from ml.datasets import TASKS, Task, load_task, run_problem, say_flagged
from ml.decision import SCORE_FNS, SCORES, apply_bias, fit_class_bias
from ml.features import (ConcatStore, FeatureStore, box_features, default_cache_dir, make_store, parse_spec,
                         spec_features, spec_views)

Store = FeatureStore | ConcatStore
from ml.heads import train_head
from ml.local_evidence import fuse_fold
from ml.localmatch import cached_keypoints
from ml.saved_runs import COLLAPSE, collapse_proba, load_blend, load_proba, save_proba  # noqa: F401 - API
from ml.metrics import classification_metrics
from ml.report import print_table

BASELINE_SPEC = "center:mean"
MULTICROP_SPEC = "center,flip:mean+tiles2,tiles3:max"
# The search space: small on purpose (inner CV x outer folds x candidates heads to fit).
SEARCH_SPACE: list[tuple[str, bool]] = [
    ("center,flip:mean", False),
    ("center,flip:mean+full:mean", False),
    ("center,flip:mean+tiles2,tiles3:max", False),
    ("center,flip:mean+tiles2,tiles3:max", True),
    ("center,flip:mean+full:mean+tiles2,tiles3:meanmax", True),
]
INNER_FOLDS = 3


def fit_predict(task: Task, store: Store, spec: str, use_boxes: bool,
                train_idx: np.ndarray, test_idx: np.ndarray, seed: int = 0,
                X: np.ndarray | None = None, fine: str | None = None) -> np.ndarray:
    """Train a head on train_idx (+ their box crops) and return test probabilities.
    fine: None = train on the task's labels; "sum"/"uniform" = train on the fine labels
    and collapse that way (collapse_proba)."""
    X = spec_features(store, task.shas, spec) if X is None else X
    Xtr, ytr = X[train_idx], task.y[train_idx]
    owner = np.zeros(0, np.int64)
    if use_boxes:
        Xb, owner = box_features(store, [task.shas[i] for i in train_idx], spec)
        if len(owner):  # owner indexes train_idx, so test-fold boxes can never leak in
            Xtr = np.concatenate([Xtr, Xb])
            ytr = np.concatenate([ytr, ytr[owner]])
    # source image of each row: the head's internal L2 CV keeps an image and its crops together
    groups = np.concatenate([np.arange(len(train_idx)), owner])
    if fine and task.fine_y is not None:
        # train on 27 brands + none and sum into the task's classes: "other" is 25 unrelated
        # looks, which one linear class cannot model
        yf = task.fine_y[train_idx]
        yf = np.concatenate([yf, yf[owner]]) if use_boxes and len(owner) else yf
        keep = yf >= 0
        head = train_head(Xtr[keep], yf[keep], len(task.fine_labels), seed=seed, groups=groups[keep])
        return collapse_proba(task, head.predict_proba(X[test_idx]), fine)
    head = train_head(Xtr, ytr, task.n_classes, seed=seed, groups=groups)
    return head.predict_proba(X[test_idx])


def _inner_splits(task: Task, train_idx: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified inner folds of the training part (positions into train_idx)."""
    y = task.y[train_idx]
    n_splits = max(2, min(INNER_FOLDS, int(np.bincount(y)[np.bincount(y) > 0].min())))
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(train_idx, y))


def _inner_oof(task: Task, store: Store, spec: str, use_boxes: bool, train_idx: np.ndarray,
               inner: list[tuple[np.ndarray, np.ndarray]], seed: int, fine: str | None) -> np.ndarray:
    """Out-of-fold probabilities of the training part over the given inner folds."""
    X = spec_features(store, task.shas, spec)
    oof = np.zeros((len(train_idx), task.n_classes))
    for tr, va in inner:
        oof[va] = fit_predict(task, store, spec, use_boxes, train_idx[tr], train_idx[va], seed, X, fine)
    return oof


def search_config(task: Task, stores: dict[str, Store], train_idx: np.ndarray, seed: int = 0,
                  fine: str | None = None, score: str = "balanced_accuracy",
                  ) -> tuple[tuple[str, str, bool], list[dict], np.ndarray]:
    """Inner stratified CV on the training part only; returns the best (backbone, spec, boxes)
    over every candidate backbone x SEARCH_SPACE by ``score`` (default balanced accuracy:
    fl27-4way is 90 % "other", plain accuracy would reward never predicting a brand; with
    --decision, the score being tuned for), the trials, and the winner's out-of-fold
    probabilities (what a decision rule is then fitted on). Seeds 000 / 003: compare, keep
    the best."""
    y = task.y[train_idx]
    inner = _inner_splits(task, train_idx, seed)
    results, oofs = [], []
    for name, store in stores.items():
        for spec, boxes in SEARCH_SPACE:
            oofs.append(_inner_oof(task, store, spec, boxes, train_idx, inner, seed, fine))
            results.append({"backbone": name, "spec": spec, "boxes": boxes, "inner_metric": score,
                            "inner_score": SCORE_FNS[score](y, oofs[-1].argmax(1), task.n_classes)})
            print(f"    inner {name} {spec} boxes={boxes}: {score} {results[-1]['inner_score']:.4f}",
                  file=sys.stderr)
    best = max(range(len(results)), key=lambda i: results[i]["inner_score"])
    r = results[best]
    return (r["backbone"], r["spec"], r["boxes"]), results, oofs[best]


def run_features(task: Task, stores: dict[str, Store], method: str, spec: str | None,
                 use_boxes: bool, seed: int, fine: str | None = None,
                 decision: str | None = None,
                 blend: tuple[np.ndarray, float] | None = None,
                 local: list | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Head-based methods. Returns (test indices, probabilities, per-fold info).
    stores: backbone name -> feature store; several only for "search" (candidates).
    decision: None = argmax of the head; a score name (ml.decision.SCORES) = per-class bias
    tuned for that score by inner CV on each training part, applied to the test fold (after
    any blend; the inner CV sees the head alone, saved runs have no inner folds).
    local: keypoints per sample (ml.localmatch) = fuse inlier evidence into the probabilities
    (ml.local_evidence), weighted by inner data; a decision bias is then tuned on the fused."""
    specs = [s for s, _ in SEARCH_SPACE] if method == "search" else [spec]
    views = sorted({v for s in specs for v in spec_views(s)} |
                   ({"boxes"} if use_boxes or method == "search" else set()))
    for store in stores.values():
        store.ensure(task.paths, task.shas, views, task.boxes)
    idx, probas, info = [], [], []
    for k, (tr, te) in enumerate(task.splits):
        chosen, trials, oof = (next(iter(stores)), spec, use_boxes), [], None
        if method == "search":
            chosen, trials, oof = search_config(task, stores, tr, seed, fine, decision or "balanced_accuracy")
        store = stores[chosen[0]]
        p = fit_predict(task, store, chosen[1], chosen[2], tr, te, seed, fine=fine)
        if blend is not None:  # (task-aligned saved probabilities, their weight)
            saved = blend[0][te]
            have = ~np.isnan(saved[:, 0])
            p[have] = (1 - blend[1]) * p[have] + blend[1] * saved[have]
        bias, local_info = None, None
        if (decision or local is not None) and oof is None:
            # inner out-of-fold probabilities of the training part: what a decision rule and
            # the local evidence's weight are fitted on, so the test fold never influences them
            oof = _inner_oof(task, store, chosen[1], chosen[2], tr, _inner_splits(task, tr, seed), seed, fine)
        if local is not None:
            score = SCORE_FNS[decision or "accuracy"]
            p, oof, local_info = fuse_fold(task, local, tr, te, p, oof,
                                           lambda y, pred: score(y, pred, task.n_classes))
        if decision:  # a per-class bias (ml.decision), the search's inner data has them
            bias = fit_class_bias(oof, task.y[tr], decision)
            p = apply_bias(p, bias)
        idx.append(te)
        probas.append(p)
        info.append({"fold": k, "backbone": chosen[0], "spec": chosen[1], "boxes": chosen[2],
                     "n_train": len(tr), "accuracy": float((p.argmax(1) == task.y[te]).mean()),
                     "search": trials, "local": local_info,
                     "decision_bias": None if bias is None else [round(float(b), 2) for b in bias]})
        print(f"  fold {k}: {chosen} acc={info[-1]['accuracy']:.4f}", file=sys.stderr)
    return np.concatenate(idx), np.concatenate(probas), info


def run_finetune(task: Task, cfg_overrides: dict) -> tuple[np.ndarray, np.ndarray, list[dict], np.ndarray]:
    """Fine-tune per fold. fl27 tasks train on the fine labels (27 brands + none) and
    collapse: "other" is 25 visually unrelated classes, easier to learn one by one, and
    one set of fine-tuned models then serves all fl27 tasks on the same folds.
    Returns (test idx, task proba, per-fold info, raw model proba)."""
    from ml.finetune import FinetuneConfig, finetune, load_images, predict_proba

    cfg = FinetuneConfig(**cfg_overrides)
    fine = task.fine_y is not None
    y_all = task.fine_y if fine else task.y
    n_out = len(task.fine_labels) if fine else task.n_classes
    images, scales = load_images(task.paths, cfg.max_side)  # decode once for all folds
    idx, probas, raw, info = [], [], [], []
    for k, (tr, te) in enumerate(task.splits):
        tr = tr[y_all[tr] >= 0]  # the two-brand photo has no single fine label
        model, curve = finetune([task.paths[i] for i in tr], y_all[tr], n_out,
                                boxes=[task.boxes[i] for i in tr], cfg=cfg,
                                images=[images[i] for i in tr], scales=scales[tr])
        p = predict_proba(model, [images[i] for i in te], cfg)
        raw.append(p)
        p = collapse_proba(task, p) if fine else p
        idx.append(te)
        probas.append(p)
        info.append({"fold": k, "n_train": len(tr), "curve": curve,
                     "accuracy": float((p.argmax(1) == task.y[te]).mean())})
        print(f"  fold {k}: acc={info[-1]['accuracy']:.4f} epochs={len(curve)}", file=sys.stderr)
    return np.concatenate(idx), np.concatenate(probas), info, np.concatenate(raw)


def evaluate(task_name: str, method: str = "head", *, backbone: str = "efficientnet-lite0",
             spec: str | None = None, use_boxes: bool | None = None, data_dir: str | None = None,
             cache_dir: str | None = None, seed: int = 0, finetune_cfg: dict | None = None,
             max_folds: int | None = None, save_to: str | None = None,
             load_from: str | None = None, fine_labels: str | None = None,
             decision: str | None = None, blend_from: str | None = None,
             blend_weight: float = 0.5, local: bool = False) -> dict:
    t0 = time.time()
    blend_missing = 0
    task = load_task(task_name, data_dir)
    say_flagged(task)
    if max_folds:
        task.splits = task.splits[:max_folds]
    if method == "finetune" and load_from:
        spec, use_boxes = None, None
        idx, proba = load_proba(load_from, task)
        folds = [{"n_train": len(tr), "loaded_from": load_from} for tr, _ in task.splits]
    elif method == "finetune":
        spec, use_boxes = None, True
        idx, proba, folds, raw = run_finetune(task, {"backbone": backbone, "seed": seed,
                                                     **(finetune_cfg or {})})
        if save_to:
            save_proba(save_to, task, idx, raw)
    else:
        spec = spec or (BASELINE_SPEC if method == "head" else MULTICROP_SPEC)
        use_boxes = (method == "multicrop") if use_boxes is None else use_boxes
        candidates = [b.strip() for b in backbone.split(",") if b.strip()]
        if len(candidates) > 1 and method != "search":
            raise ValueError("several backbones (comma-separated) are candidates for --method search only")
        # fine outputs collapse into the task's classes as the head's do (--fine-labels)
        blend = (load_blend(blend_from, task, fine_labels or "sum"), blend_weight) if blend_from else None
        if blend is not None:
            test = np.concatenate([te for _, te in task.splits])
            blend_missing = int(np.isnan(blend[0][test, 0]).sum())
            if blend_missing:
                print(f"  --blend: {blend_missing} test images have no saved probabilities; "
                      "the head's own are used for them", file=sys.stderr)
        stores = {b: make_store(b, cache_dir=cache_dir) for b in candidates}
        kps = cached_keypoints(task.paths, task.shas, cache_dir or default_cache_dir()) if local else None
        idx, proba, folds = run_features(task, stores, method, spec, use_boxes, seed, fine_labels,
                                         decision, blend, kps)
    m = classification_metrics(task.y[idx], proba, task.labels)
    return {
        "task": task_name, "backbone": backbone, "method": method,
        "spec": None if method == "search" else spec, "boxes": use_boxes,
        "train_labels": f"fine (27 brands + none), collapsed by {fine_labels}"
        if fine_labels and task.fine_y is not None else "task",
        "local_evidence": "SIFT inliers to labelled training images (ml.localmatch), weight by inner data"
        if local and method != "finetune" else None,
        "decision": f"per-class bias tuned for {decision} by inner CV" if decision else "argmax",
        "blend": {"file": blend_from, "weight": blend_weight, "missing": blend_missing}
        if blend_from and method != "finetune" else None,
        "protocol": "given train/test split" if len(task.splits) == 1 and not max_folds
        else f"{len(task.splits)}-fold stratified CV (seed 0) over sha256-deduplicated files, "
             "metrics on concatenated out-of-fold predictions",
        "n_train": int(round(np.mean([f["n_train"] for f in folds]))),
        "n_test": int(len(idx)), **m,
        "duplicates_collapsed": task.duplicate_groups(), "flagged": task.flagged,
        "folds": folds, "seconds": round(time.time() - t0, 1),
    }


def _ft_overrides(pairs: list[str]) -> dict:
    """--ft key=value pairs, typed after FinetuneConfig's defaults."""
    from ml.finetune import FinetuneConfig

    types = {f.name: type(getattr(FinetuneConfig(), f.name)) for f in fields(FinetuneConfig)}
    out = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        if k not in types:
            raise SystemExit(f"unknown fine-tune option {k!r}; known: {sorted(types)}")
        out[k] = v.lower() in ("1", "true", "yes") if types[k] is bool else types[k](v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ml.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=[*TASKS, "all"],
                    help="'all': every task with its best measured recipe (ml.report), printed "
                         "next to the issue's baselines and targets; method options are ignored, but "
                         "--blend FILE averages a saved run into fl27-28way and fl27-4way")
    ap.add_argument("--backbone", default="efficientnet-lite0",
                    help="feature backbone; heads also take a '+'-joined list whose features "
                         "are concatenated, e.g. efficientnet-lite0+efficientnet-lite2; with "
                         "--method search a ','-separated list of candidates, chosen per fold "
                         "by inner CV (architecture search)")
    ap.add_argument("--method", default="search", choices=["head", "multicrop", "search", "finetune"])
    ap.add_argument("--finetune", action="store_true", help="same as --method finetune")
    ap.add_argument("--features", help="feature spec, e.g. 'center,flip:mean+tiles3:max'")
    ap.add_argument("--boxes", choices=["yes", "no"], help="box crops as extra training rows")
    ap.add_argument("--ft", nargs="*", default=[], metavar="KEY=VALUE",
                    help="fine-tune options (FinetuneConfig fields), e.g. epochs=10 image_size=320")
    ap.add_argument("--save-proba", help="finetune: save out-of-fold probabilities (.npz)")
    ap.add_argument("--load-proba", help="finetune: evaluate saved out-of-fold probabilities "
                    "(e.g. from a GPU run) instead of training")
    ap.add_argument("--fine-labels", nargs="?", const="sum", choices=COLLAPSE,
                    help="fl27 heads: train on 27 brands + none and collapse into the task's "
                         "classes by sum (default) or uniform (equal task-class priors)")
    ap.add_argument("--decision", choices=SCORES,
                    help="heads: tune a per-class bias for this score by inner CV on each "
                         "training part (a threshold for two classes); default: argmax")
    ap.add_argument("--blend", metavar="NPZ[,NPZ...]",
                    help="heads: average the test probabilities with a saved run (--save-proba of "
                         "--method finetune on the same task's folds); several runs (seeds) are "
                         "averaged first")
    ap.add_argument("--blend-weight", type=float, default=0.5,
                    help="the saved run's weight in --blend (default 0.5)")
    ap.add_argument("--local", choices=["yes", "no"], default="no",
                    help="heads: add spatially verified SIFT matches to the labelled training images "
                         "as evidence (ml.localmatch; small logos), weighted by inner data")
    ap.add_argument("--folds", type=int, help="only the first N CV folds (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="folder with shoes/ and flickrlogos27/")
    ap.add_argument("--cache", help="feature cache folder")
    ap.add_argument("--json", required=True, help="write the result here")
    a = ap.parse_args(argv)
    if problem := run_problem(a.task, a.data, a.json):
        ap.error(problem)
    if a.task == "all":
        # the blend recipes are fl27 ones (all fl27 tasks share their folds): check on those
        if a.blend and (problem := _blend_problem(a.blend, "fl27-28way", a)):
            ap.error(problem)
        from ml.report import main_all
        return main_all(evaluate, a, _command(argv))
    method = "finetune" if a.finetune else a.method
    # bad options are the user's mistake: say which one, before any minutes of embedding
    if "," in a.backbone and method != "search":
        ap.error(f"--backbone {a.backbone!r}: a ','-separated list of candidates needs --method search")
    if a.features:
        try:
            parse_spec(a.features)
        except ValueError as e:
            ap.error(f"--features: {e}")
    if a.local == "yes" and method == "finetune":
        ap.error("--local: for head methods (the fine-tune has no inner folds to weigh it on)")
    if a.blend and method == "finetune":
        ap.error("--blend: for head methods; a fine-tune run is what gets blended (--save-proba)")
    if not 0 <= a.blend_weight <= 1:
        ap.error(f"--blend-weight: {a.blend_weight} is not between 0 and 1")
    if a.blend and (problem := _blend_problem(a.blend, a.task, a)):
        ap.error(problem)  # before minutes of embedding, like the options above
    boxes = None if a.boxes is None else a.boxes == "yes"
    if method == "finetune":
        from ml.finetune import FinetuneConfig
        try:
            FinetuneConfig(**_ft_overrides(a.ft))
        except ValueError as e:
            ap.error(f"--ft {e}")
    r = evaluate(a.task, method, backbone=a.backbone, spec=a.features, use_boxes=boxes,
                 data_dir=a.data, cache_dir=a.cache, seed=a.seed,
                 finetune_cfg=_ft_overrides(a.ft), max_folds=a.folds,
                 save_to=a.save_proba, load_from=a.load_proba, fine_labels=a.fine_labels,
                 decision=a.decision, blend_from=a.blend, blend_weight=a.blend_weight,
                 local=a.local == "yes")
    r["command"] = _command(argv)
    write_json(a.json, r)
    print_table([r])
    return 0


def _command(argv: list[str] | None) -> str:
    return "python -m ml.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])


def _blend_problem(paths: str, task_name: str, a: argparse.Namespace) -> str | None:
    """What is wrong with --blend for this task's (first --folds) folds, or None."""
    task = load_task(task_name, a.data)
    task.splits = task.splits[:a.folds] if a.folds else task.splits
    try:
        load_blend(paths, task)
    except ValueError as e:
        return str(e)
    return None


if __name__ == "__main__":
    sys.exit(main())
