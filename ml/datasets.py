"""Benchmark tasks built from the shared data sets (shoes, FlickrLogos-27).

`load_task(name, data_dir)` returns a `Task`: one sample per distinct file content
(sha256), integer labels, the evaluation splits and the annotated logo boxes.

Why dedup by content: FlickrLogos-27 ships byte-identical files under different names,
some crossing the train/query split. Counting them twice inflates the test score (the
model has literally seen the test image), so identical files collapse to one sample
and CV folds are built over the collapsed samples. A group whose names disagree on
the label is dropped and reported in `Task.flagged` (a labeling tool must surface
such conflicts instead of silently picking one). So are files no decoder can read and
annotation lines that do not parse: named there, left out, the rest of the task loads.
A data folder without the task's files raises `DatasetError` naming the missing path.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from ml.atomic import unwritable
from ml.preprocess import load_rgb

TASKS = ("shoes-3", "fl27-4way", "fl27-28way", "fl27-logo")
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
CV_FOLDS = 5
CV_SEED = 0
FL27_NONE = "none"
FL27_FOCUS = ("Adidas", "Nike", "Puma")  # the seed-001 brands; the rest become "other"


@dataclass
class Task:
    name: str
    paths: list[str]  # one representative file per distinct content
    labels: list[str]  # class names, index = class id
    y: np.ndarray  # (n,) int64
    shas: list[str]
    # [(train_idx, test_idx)]: 5 stratified folds for fl27, the given split for shoes
    splits: list[tuple[np.ndarray, np.ndarray]]
    # per sample: (m, 4) float32 boxes x1, y1, x2, y2 in pixels of the original file
    boxes: list[np.ndarray]
    aliases: dict[int, list[str]] = field(default_factory=dict)  # sample -> all file names
    flagged: list[dict] = field(default_factory=list)  # dropped groups and why
    # fl27 only: the finest labels (27 brands + none), -1 where not single-label, and the
    # map fine class -> task class, so coarse tasks can train on fine labels and collapse
    fine_labels: list[str] | None = None
    fine_y: np.ndarray | None = None
    fine_to_task: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def duplicate_groups(self) -> list[list[str]]:
        """Groups of >1 byte-identical file names that collapsed into one sample."""
        return [names for names in self.aliases.values() if len(names) > 1]


@functools.lru_cache(maxsize=None)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    return sha256_file(path)


@functools.lru_cache(maxsize=None)
def _unreadable_cached(path: str, size: int, mtime: float) -> str | None:
    """Why the image at ``path`` cannot be decoded, or None. A full decode at 1/8 scale
    (JPEG draft): ~1 ms a photo, and it still reads every byte, so a cut-off file is caught."""
    try:
        load_rgb(path, draft_size=32)
    except (ValueError, OSError) as exc:
        return str(exc)
    return None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class DatasetError(FileNotFoundError):
    """A task's files are not where ``--data`` points: the message names what is missing."""


# what each task reads under the data folder (folders end with "/")
REQUIRED = {
    "shoes": ("shoes/train/", "shoes/test/"),
    "fl27": ("flickrlogos27/images/", "flickrlogos27/training_set_annotation.txt",
             "flickrlogos27/query_set_annotation.txt"),
}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    root = Path(data_dir or os.environ.get("TAGLOOP_DATA") or DEFAULT_DATA_DIR)
    if not (root / "shoes").is_dir() and not (root / "flickrlogos27").is_dir():
        raise DatasetError(f"no shoes/ or flickrlogos27/ under {root} (--data DIR or TAGLOOP_DATA)")
    return root


def check_data(name: str, data_dir: str | Path | None = None) -> Path:
    """The data folder for task ``name`` (or "all"), or DatasetError naming the first missing
    file or folder -- cheap, so a CLI can say it before minutes of work."""
    root = resolve_data_dir(data_dir)
    if name not in (*TASKS, "all"):
        raise ValueError(f"unknown task {name!r}; choose from {TASKS}")
    sets = list(REQUIRED) if name == "all" else ["shoes" if name == "shoes-3" else "fl27"]
    for rel in (r for key in sets for r in REQUIRED[key]):
        path = root / rel
        if not (path.is_dir() if rel.endswith("/") else path.is_file()):
            raise DatasetError(f"{name}: missing {path} (--data DIR holds shoes/ and flickrlogos27/, "
                               "see ../shared/datasets/README.md)")
    return root


def _collapse(
    items: list[tuple[Path, str, str]], drop_conflicts: bool = True,
) -> tuple[list[tuple[Path, str, str, list[str], str]], list[dict]]:
    """items: (path, label, split_tag). Group by sha256; keep groups with one label.

    Returns (kept: (path, label, split_tag, names, sha256), flagged). For a group spanning
    splits, the first split tag in sort order ("test" < "train") wins: a file that is
    also in the test set must be treated as test, never trained on.
    """
    by_sha: dict[str, list[tuple[Path, str, str]]] = {}
    kept, flagged = [], []
    for path, label, tag in items:
        st = path.stat()
        # a file no model can read is reported and left out; the rest of the task goes on
        if problem := _unreadable_cached(str(path), st.st_size, st.st_mtime):
            flagged.append({"files": [path.name], "labels": [label], "reason": f"unreadable image: {problem}"})
            continue
        by_sha.setdefault(_sha256_cached(str(path), st.st_size, st.st_mtime), []).append((path, label, tag))
    # samples ordered by representative file name: fold assignment must not depend on
    # file bytes (a downscaled copy of the data set on a GPU box gets the same folds)
    for sha, group in sorted(by_sha.items(), key=lambda kv: min(p.name for p, _, _ in kv[1])):
        names = sorted(p.name for p, _, _ in group)
        labels = sorted({lab for _, lab, _ in group})
        if len(labels) > 1 and drop_conflicts:
            flagged.append({"sha256": sha, "files": names, "labels": labels,
                            "reason": "identical files with different labels"})
            continue
        first = min(group, key=lambda g: g[0].name)
        tag = min(t for _, _, t in group)
        kept.append((first[0], first[1], tag, names, sha))
    return kept, flagged


def _load_shoes(root: Path) -> Task:
    base = root / "shoes"
    items = [(p, p.parent.name, split)
             for split in ("test", "train")
             for p in sorted((base / split).glob("*/*")) if p.is_file()]
    kept, flagged = _collapse(items)
    labels = sorted({lab for _, lab, _, _, _ in kept})
    y = np.array([labels.index(lab) for _, lab, _, _, _ in kept], dtype=np.int64)
    tags = np.array([t for _, _, t, _, _ in kept])
    split = (np.flatnonzero(tags == "train"), np.flatnonzero(tags == "test"))
    for part, idx in zip(("train", "test"), split):
        if not len(idx):
            raise DatasetError(f"shoes-3: no readable images in {base / part}/<brand>/")
    return Task(
        name="shoes-3", paths=[str(p) for p, *_ in kept], labels=labels, y=y,
        shas=[s for *_, s in kept], splits=[split],
        boxes=[np.zeros((0, 4), np.float32) for _ in kept],
        aliases={i: k[3] for i, k in enumerate(kept)}, flagged=flagged,
    )


def _read_fl27(base: Path) -> tuple[dict[str, set[str]], dict[str, list[list[float]]], list[dict]]:
    """File name -> set of brands (or {"none"}), file name -> boxes, and the annotation lines
    that could not be read (file:line and why; the other lines still count)."""
    brands: dict[str, set[str]] = {}
    boxes: dict[str, list[list[float]]] = {}
    bad: list[dict] = []
    train = base / "training_set_annotation.txt"
    for no, line in enumerate(train.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) < 7:
                raise ValueError(f"{len(parts)} fields")
            x1, y1, x2, y2 = map(float, parts[3:7])
        except ValueError as exc:
            bad.append({"files": [f"{train.name}:{no}"],
                        "reason": f"not 'file brand subset x1 y1 x2 y2' ({exc})"})
            continue
        name, brand = parts[0], parts[1]
        brands.setdefault(name, set()).add(brand)
        if x2 > x1 and y2 > y1:  # a few annotations are degenerate; they are no crop
            boxes.setdefault(name, []).append([x1, y1, x2, y2])
    query = base / "query_set_annotation.txt"
    for no, line in enumerate(query.read_text(errors="replace").splitlines(), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2:
            brands.setdefault(parts[0].strip(), set()).add(parts[1].strip())
        elif line.strip():
            bad.append({"files": [f"{query.name}:{no}"], "reason": "not 'file<TAB>brand'"})
    return brands, boxes, bad


def _fl27_folds(base: Path, brands: dict[str, set[str]]) -> dict[str, int]:
    """sha256 -> fold, computed over *all* distinct files of the data set (task-independent),
    stratified by the fine label (first brand for the two-brand photo)."""
    items = [(base / "images" / f, sorted(b)[0], "all") for f, b in sorted(brands.items())
             if (base / "images" / f).is_file()]
    kept, _ = _collapse(items, drop_conflicts=False)
    skf = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=CV_SEED)
    fold_of = {}
    for k, (_, te) in enumerate(skf.split(np.zeros(len(kept)), [lab for _, lab, *_ in kept])):
        fold_of.update({kept[i][4]: k for i in te})
    return fold_of


def _fl27_mapper(name: str):
    if name == "fl27-28way":
        return lambda b: b
    if name == "fl27-4way":
        return lambda b: b if b in FL27_FOCUS else "other"
    if name == "fl27-logo":
        return lambda b: "none" if b == FL27_NONE else "logo"
    raise ValueError(f"unknown task {name!r}; choose from {TASKS}")


def _load_fl27(name: str, root: Path) -> Task:
    base = root / "flickrlogos27"
    brands, boxes_by_name, flagged = _read_fl27(base)
    mapper = _fl27_mapper(name)
    items, fine_of = [], {}
    for fname, bset in sorted(brands.items()):
        path = base / "images" / fname
        if not path.is_file():
            flagged.append({"files": [fname], "reason": "annotated file missing"})
            continue
        mapped = sorted({mapper(b) for b in bset})
        if len(mapped) > 1:  # e.g. the one photo with two brands, in a single-label task
            flagged.append({"files": [fname], "labels": mapped,
                            "reason": "several labels on one image in a single-label task"})
            continue
        items.append((path, mapped[0], "all"))
        fine_of[fname] = sorted(bset)[0] if len(bset) == 1 else ""
    kept, dup_flags = _collapse(items)
    flagged += dup_flags
    labels = sorted({lab for _, lab, _, _, _ in kept}, key=lambda s: (s in ("other", "none"), s))
    y = np.array([labels.index(lab) for _, lab, _, _, _ in kept], dtype=np.int64)
    # Boxes of every alias: identical files share the same pixels, hence the same boxes.
    boxes = []
    for _, _, _, names, _ in kept:
        b = [bb for n in names for bb in boxes_by_name.get(n, [])]
        arr = np.unique(np.array(b, np.float32).reshape(-1, 4), axis=0)
        boxes.append(arr)
    # Fine (27 brands + none) labels: every fl27 task shares one fold assignment,
    # stratified by the fine label, so a model trained on fine labels can be evaluated on
    # the coarse tasks (4-way, logo) fold by fold. The two-brand photo gets fine id -1
    # (not trainable as single-label) and is stratified with its first brand.
    fine = [fine_of[k[3][0]] for k in kept]
    fine_labels = sorted({f for f in fine if f}, key=lambda s: (s == FL27_NONE, s))
    fine_y = np.array([fine_labels.index(f) if f else -1 for f in fine], dtype=np.int64)
    fold_of = _fl27_folds(base, brands)
    folds = np.array([fold_of[sha] for *_, sha in kept])
    splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(CV_FOLDS)]
    collapse = np.array([labels.index(mapper(f)) for f in fine_labels], dtype=np.int64)
    return Task(
        name=name, paths=[str(p) for p, *_ in kept], labels=labels, y=y,
        shas=[s for *_, s in kept], splits=splits, boxes=boxes,
        aliases={i: k[3] for i, k in enumerate(kept)}, flagged=flagged,
        fine_labels=fine_labels, fine_y=fine_y, fine_to_task=collapse,
    )


def run_problem(name: str, data_dir: str | Path | None, json_path: str | Path) -> str | None:
    """What would stop a CLI run on task ``name`` -- data missing, an unwritable ``--json`` --
    or None: for the CLIs to say before minutes of work, not after."""
    try:
        check_data(name, data_dir)
    except DatasetError as e:
        return str(e)
    if problem := unwritable(json_path):
        return f"--json: {problem}"
    return None


def say_flagged(task: Task, shown: int = 5) -> None:
    """On stderr: which files the task left out and why (all of them are in ``task.flagged``)."""
    for f in task.flagged[:shown]:
        print(f"  {task.name}: left out {', '.join(f['files'])}: {f['reason']}", file=sys.stderr)
    if len(task.flagged) > shown:
        print(f"  {task.name}: ... {len(task.flagged) - shown} more (the JSON's 'flagged' lists them)",
              file=sys.stderr)


def load_task(name: str, data_dir: str | Path | None = None) -> Task:
    """Load a benchmark task. `data_dir` holds shoes/ and flickrlogos27/."""
    root = check_data(name, data_dir)
    if name == "shoes-3":
        return _load_shoes(root)
    return _load_fl27(name, root)
