"""Atomic file writes: a temp file next to the target, then ``os.replace``.

A reader (another process, a web worker) sees the old file or the new one, never half of one,
and a killed writer leaves at most a hidden temp file, never a truncated target. The temp
name is unique per process *and* per call, so two writers filling the same target (two
evaluation runs sharing a feature cache) never write into one temp file.
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


def temp_path_for(path: Path) -> Path:
    """Hidden unique name in ``path``'s folder (same filesystem, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_write(path: str | Path, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Binary file object whose content replaces ``path`` when the block ends without error.

    ``fsync=False`` for caches that can be recomputed: syncing thousands of small files would
    dominate the time to fill them.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def unwritable(path: str | Path) -> str | None:
    """Why a file cannot be written at ``path``, or None; creates the missing folders. For a
    CLI to ask before a long run, not after it."""
    p = Path(path)
    if p.is_dir():
        return f"{p} is a folder"
    blocker = next((a for a in p.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return f"{blocker} is a file, not a folder"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the folder {p.parent}: {exc.strerror or exc}"
    if not os.access(p.parent, os.W_OK):
        return f"the folder {p.parent} is not writable"
    return None


def write_json(path: str | Path, obj) -> None:
    """``obj`` as indented JSON at ``path`` (folders created), atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=1).encode())
