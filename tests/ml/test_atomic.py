"""ml.atomic: what a reader of a file being rewritten can see."""
from __future__ import annotations

import pytest

from ml.atomic import atomic_write


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
