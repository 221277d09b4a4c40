"""Atomic file writes: a temp file next to the target, then ``os.replace``.

A reader (another process, a web worker) sees the old file or the new one, never half of one,
and a killed writer leaves at most a hidden temp file, never a truncated target. The temp
name is unique per process *and* per call, so two writers filling the same target (two
evaluation runs sharing a feature cache) never write into one temp file.
"""
from __future__ import annotations

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
