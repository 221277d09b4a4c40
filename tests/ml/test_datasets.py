"""Benchmark task loading: sha256 dedup, label conflicts, leak-free folds (real data)."""
from __future__ import annotations

import numpy as np
import pytest

from ml.datasets import TASKS, load_task, sha256_file

from tests.ml._embeddings import datasets_dir

FL27 = [t for t in TASKS if t.startswith("fl27")]


def _need(sub: str) -> None:
    if not (datasets_dir() / sub).is_dir():
        pytest.skip(f"{sub} dataset not available")


@pytest.mark.parametrize("name", FL27)
def test_fl27_dedup_finds_the_identical_groups(name):
    _need("flickrlogos27")
    task = load_task(name, datasets_dir())
    groups = task.duplicate_groups()
    assert len(groups) == 9  # the README's 9 groups of byte-identical files
    for names in groups:
        shas = {sha256_file(datasets_dir() / "flickrlogos27" / "images" / n) for n in names}
        assert len(shas) == 1, names
    assert len(set(task.shas)) == len(task.shas)  # one sample per distinct content


@pytest.mark.parametrize("name", FL27)
def test_folds_never_split_identical_files(name):
    _need("flickrlogos27")
    task = load_task(name, datasets_dir())
    assert len(task.splits) == 5
    seen = np.zeros(len(task.y), dtype=int)
    for tr, te in task.splits:
        seen[te] += 1
        # every alias file of a test sample is hashed again: none may be in training
        train_files = {n for i in tr for n in task.aliases[i]}
        test_files = {n for i in te for n in task.aliases[i]}
        assert not train_files & test_files
        assert not {task.shas[i] for i in tr} & {task.shas[i] for i in te}
        # stratified: each class's share in the test fold is close to its overall share
        overall = np.bincount(task.y, minlength=task.n_classes) / len(task.y)
        fold = np.bincount(task.y[te], minlength=task.n_classes) / len(te)
        assert np.abs(overall - fold).max() < 0.02
    assert (seen == 1).all()  # each sample is tested exactly once


def test_fl27_tasks_share_folds_and_labels():
    _need("flickrlogos27")
    t28, t4, tl = (load_task(n, datasets_dir()) for n in ("fl27-28way", "fl27-4way", "fl27-logo"))
    assert len(t28.labels) == 28 and t28.labels[-1] == "none"
    assert t4.labels == ["Adidas", "Nike", "Puma", "other"]
    assert tl.labels == ["logo", "none"]
    # the one photo with two brands cannot be a 28-way single-label sample
    assert any("3759339764.jpg" in f["files"] for f in t28.flagged)
    for a, b in zip(t28.splits, t4.splits):
        test28 = {t28.shas[i] for i in a[1]}
        test4 = {t4.shas[i] for i in b[1]}
        assert test28 <= test4 and len(test4 - test28) <= 1
    assert sum(len(b) for b in t28.boxes) > 1000  # logo boxes for training crops


def test_shoes_given_split():
    _need("shoes")
    task = load_task("shoes-3", datasets_dir())
    (tr, te), = task.splits
    assert task.labels == ["adidas", "converse", "nike"]
    assert len(tr) == 711 and len(te) == 114
    assert np.bincount(task.y[te]).tolist() == [38, 38, 38]
