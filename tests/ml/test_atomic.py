"""ml.atomic: what a reader of a file being rewritten can see."""
from __future__ import annotations

import json

import pytest

from ml.atomic import atomic_write, unwritable, write_json


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "head.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["head.npz"]


def test_two_overlapping_writers_of_one_file_each_finish_cleanly(tmp_path):
    # Two evaluation runs filling the same feature-cache entry: with a shared temp name the
    # first rename moved the other writer's file away and its rename failed.
    target = tmp_path / "features.npy"
    with atomic_write(target, fsync=False) as first:
        first.write(b"A" * 1000)
        with atomic_write(target, fsync=False) as second:
            second.write(b"B")
        assert target.read_bytes() == b"B"  # a reader sees whole files only
    assert target.read_bytes() == b"A" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]


def test_unwritable_says_why_before_a_long_run_and_creates_missing_folders(tmp_path):
    (tmp_path / "notes").write_text("x")
    assert unwritable(tmp_path) == f"{tmp_path} is a folder"
    assert unwritable(tmp_path / "notes" / "out" / "r.json") == f"{tmp_path / 'notes'} is a file, not a folder"
    assert unwritable(tmp_path / "runs" / "today" / "r.json") is None
    assert (tmp_path / "runs" / "today").is_dir()


def test_write_json_writes_the_whole_object_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "out" / "r.json"
    write_json(target, {"accuracy": 0.9, "labels": ["a", "b"]})
    assert json.loads(target.read_text()) == {"accuracy": 0.9, "labels": ["a", "b"]}
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})  # not serialisable: fails before the old file is touched
    assert json.loads(target.read_text())["accuracy"] == 0.9
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]
