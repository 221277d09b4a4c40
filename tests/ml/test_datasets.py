"""Benchmark task loading: sha256 dedup, label conflicts, leak-free folds (real data)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ml.datasets import TASKS, DatasetError, check_data, load_task, sha256_file

from tests.ml._embeddings import datasets_dir, shoes_copy

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


def test_unreadable_files_are_left_out_by_name_and_the_rest_of_the_task_loads(tmp_path):
    _need("shoes")
    root = shoes_copy(tmp_path)
    good = next((root / "shoes" / "train" / "nike").iterdir())
    (root / "shoes" / "train" / "nike" / "cut.jpg").write_bytes(good.read_bytes()[:2000])
    (root / "shoes" / "train" / "nike" / "notes.txt").write_text("shot list")
    (root / "shoes" / "test" / "adidas" / "empty.jpg").write_bytes(b"")
    task = load_task("shoes-3", root)
    (tr, te), = task.splits
    assert (len(tr), len(te)) == (12, 12)
    reasons = {f["files"][0]: f["reason"] for f in task.flagged}
    assert set(reasons) == {"cut.jpg", "notes.txt", "empty.jpg"}
    assert "truncated" in reasons["cut.jpg"] and "not a recognised image" in reasons["notes.txt"]
    assert "empty file" in reasons["empty.jpg"]


def test_a_shoes_split_without_a_readable_image_is_named(tmp_path):
    _need("shoes")
    root = shoes_copy(tmp_path, per_class=1)
    for f in (root / "shoes" / "test").glob("*/*"):
        f.write_text("not a photo")
    with pytest.raises(DatasetError, match=r"no readable images in .*shoes/test"):
        load_task("shoes-3", root)


def test_a_missing_data_set_is_named_before_any_work(tmp_path):
    _need("shoes")
    shoes_copy(tmp_path, per_class=1)
    with pytest.raises(DatasetError, match=r"fl27-28way: missing .*flickrlogos27/images"):
        check_data("fl27-28way", tmp_path)
    with pytest.raises(DatasetError, match="all: missing"):
        check_data("all", tmp_path)
    assert check_data("shoes-3", tmp_path) == tmp_path
    with pytest.raises(DatasetError, match="no shoes/ or flickrlogos27/"):
        check_data("shoes-3", tmp_path / "nowhere")


def test_a_malformed_annotation_line_is_reported_and_the_other_lines_count(tmp_path):
    _need("flickrlogos27")
    src = datasets_dir() / "flickrlogos27"
    base = tmp_path / "flickrlogos27"
    base.mkdir()
    (base / "images").symlink_to(src / "images")
    shutil.copy(src / "query_set_annotation.txt", base)
    lines = (src / "training_set_annotation.txt").read_text().splitlines()
    lines.insert(3, lines[3].split()[0] + " Adidas 1 x1 y1 x2 y2")  # a real file, unreadable box
    (base / "training_set_annotation.txt").write_text("\n".join(lines) + "\n")
    task, real = load_task("fl27-28way", tmp_path), load_task("fl27-28way", datasets_dir())
    assert task.shas == real.shas and (task.y == real.y).all()
    bad = [f for f in task.flagged if f["files"] == ["training_set_annotation.txt:4"]]
    assert len(bad) == 1 and "x1 y1 x2 y2" in bad[0]["reason"]
