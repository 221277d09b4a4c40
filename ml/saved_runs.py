"""Class probabilities between runs: fine (27 brands + none) outputs collapsed into a task's
classes, out-of-fold runs saved to .npz (e.g. a fine-tune on a GPU machine) and loaded back,
and --blend's alignment of saved runs to a task's samples."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ml.datasets import Task


COLLAPSE = ("sum", "uniform")


def collapse_proba(task: Task, fine_proba: np.ndarray, how: str = "sum") -> np.ndarray:
    """Fine (27 brands + none) probabilities -> the task's classes.

    "sum": P(task class) = sum of its fine classes (the posterior under the head's prior).
    "uniform": that sum divided by the number of fine classes it holds, renormalised. The
    fine head is trained class-balanced, i.e. under a uniform prior over 28 fine classes,
    so "other" (25 of them) starts with 25x the prior of one brand; dividing it out is the
    Bayes decision for equal task-class priors -- what balanced accuracy rewards.
    Measured (lite0 multicrop + boxes, 4-way): bal. acc 0.693 -> 0.761, macro-F1 drops."""
    if how not in COLLAPSE:
        raise ValueError(f"unknown collapse {how!r}; choose from {COLLAPSE}")
    out = np.zeros((len(fine_proba), task.n_classes))
    np.add.at(out.T, task.fine_to_task, fine_proba.T)
    if how == "uniform":
        out /= np.bincount(task.fine_to_task, minlength=task.n_classes).clip(1)
        out /= out.sum(axis=1, keepdims=True).clip(1e-12)
    return out


def save_proba(path: str, task: Task, idx: np.ndarray, raw: np.ndarray) -> None:
    """Out-of-fold model outputs keyed by file content (sha256) and file name."""
    names = np.array([task.aliases[i][0] for i in idx])
    np.savez(path, names=names, shas=np.array([task.shas[i] for i in idx]),
             proba=raw.astype(np.float32), labels=np.array(task.fine_labels or task.labels))


def load_proba(path: str, task: Task, how: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """Saved out-of-fold outputs -> (idx, task proba); fine outputs are collapsed.
    Matched by sha256; files saved before shas were stored, by name (unique names only:
    the shoes folders repeat names such as 0.jpg across brands)."""
    z = np.load(path, allow_pickle=False)
    if "shas" in z.files:
        keys, pos = z["shas"], {s: i for i, s in enumerate(task.shas)}
    else:
        names = [task.aliases[i][0] for i in range(len(task.y))]
        seen = Counter(names)
        keys, pos = z["names"], {n: i for i, n in enumerate(names) if seen[n] == 1}
    keep = [j for j, k in enumerate(keys) if str(k) in pos]
    idx = np.array([pos[str(keys[j])] for j in keep], dtype=np.int64)
    proba = z["proba"][keep].astype(np.float64)
    if list(z["labels"]) == (task.fine_labels or []) and task.fine_labels != task.labels:
        proba = collapse_proba(task, proba, how)
    return idx, proba


def load_blend(paths: str, task: Task, how: str = "sum") -> np.ndarray:
    """Saved runs' probabilities aligned to the task's samples (NaN rows where none has any);
    several comma-separated files (e.g. fine-tunes with other seeds) are averaged.
    A test fold a file does not cover at all means another task's folds or data: refused. A few
    missing rows (the fl27 photo with two brands is in the 4-way task but not in 28-way) keep
    the head's own probabilities; how many is printed and kept in the JSON."""
    runs = []
    for path in blend_files(paths):
        try:
            idx, proba = load_proba(path, task, how)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"--blend {path}: not a file saved by --save-proba ({exc})") from None
        if proba.shape[1] != task.n_classes:
            raise ValueError(f"--blend {path}: {proba.shape[1]} classes, the task has {task.n_classes}")
        out = np.full((len(task.y), task.n_classes), np.nan)
        out[idx] = proba
        for k, (_, te) in enumerate(task.splits):
            missing = int(np.isnan(out[te, 0]).sum())
            if missing > len(te) // 2:
                raise ValueError(f"--blend {path}: no saved probabilities for {missing} of {len(te)} "
                                 f"test images of fold {k} (saved from another task, data set or --folds?)")
        runs.append(out)
    stack = np.stack(runs)
    have = (~np.isnan(stack[:, :, :1])).sum(0)
    mean = np.nansum(stack, axis=0) / np.maximum(have, 1)
    return np.where(have > 0, mean, np.nan)


def blend_files(paths: str) -> list[str]:
    """--blend's comma-separated files; a missing one is named."""
    files = [p.strip() for p in paths.split(",") if p.strip()]
    for f in files:
        if not Path(f).is_file():
            raise ValueError(f"--blend: no such file {f!r}")
    if not files:
        raise ValueError("--blend: no file given")
    return files
