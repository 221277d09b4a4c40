"""Second look: current labels that a check model (out-of-fold) and the nearest neighbours
disagree with (ml.noise), most suspicious first.

The scores grow faster than the labels (an L2 choice, five fold heads and every label's
neighbours: 2.7 s at 3k labels, 44 s at 40k on 2 cores, bench/noise.py), so they are cached
in a file next to the vectors, keyed by what they depend on. Up to
``TAGLOOP_SECOND_LOOK_INLINE`` current labels a page load after the labels changed computes
them itself, as before. Above, no request waits for them: the page serves the last scores
(rows whose label changed since are left out) and asks a worker (``tasks.second_look``) for
fresh ones, one request at a time per taxonomy (a marker file). A computation that fails
(in the worker or in the page load) is recorded with its message; the page shows it and no
new one is tried for ``FAILED_RETRY_SECONDS``, so a failing computation is not repeated on
every page load and every reload of the waiting card.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from django.conf import settings

from ml.atomic import atomic_write

from ..models import Label, LabelEvent, Taxonomy
from . import vectors
from .similarity import describe

CHUNK = 4  # candidates checked per row asked for, per round of queries
PENDING_STALE_SECONDS = 15 * 60  # a request this old lost its message or its worker: ask again
FAILED_RETRY_SECONDS = 10 * 60  # after a failed computation, none is tried again for this long
FIELDS = ("ids", "given", "scores", "alt", "alt_prob", "knn")

log = logging.getLogger(__name__)


@dataclass
class Page:
    """What the page shows: the rows, and how current the scores behind them are."""

    rows: list[dict] = field(default_factory=list)
    scored: bool = False  # scores exist (possibly older than the labels)
    n_scored: int = 0  # labels the scores were computed from
    n_labels: int = 0  # current labels now
    refreshing: bool = False  # a worker was asked for scores of the current labels
    unreachable: bool = False  # ... but the broker could not be reached
    failed: str = ""  # the last computation's error, while no new one is tried
    failed_at: datetime | None = None
    retry_at: datetime | None = None
    single_label_only: bool = False  # a multi-label taxonomy: nothing is scored (see second_look)


def _path(taxonomy: Taxonomy, suffix: str = "npz") -> Path:
    # Next to the vectors it is computed from: per client and backbone, gone with them.
    return vectors.store_for(taxonomy.client_id).root / f"second_look-{taxonomy.pk}.{suffix}"


def _current(taxonomy: Taxonomy, tag_ids: list[int]) -> tuple[str, int]:
    """(key, current label count). The key holds what the scores depend on: the stored
    vectors, the active tags and the set of labels. The count changes with every new label or
    undo but not with a "keep" or a correction (a re-save); rows whose label changed since
    are dropped when read."""
    n_labels = Label.objects.filter(taxonomy=taxonomy, is_current=True).count()
    store = "\n".join(vectors.store_for(taxonomy.client_id).version())
    return hashlib.sha1(f"{store}|{tag_ids}|{n_labels}".encode()).hexdigest(), n_labels


def _read(taxonomy: Taxonomy) -> tuple[str, dict[str, np.ndarray]] | None:
    try:
        with np.load(_path(taxonomy)) as f:
            return str(f["key"]), {name: f[name] for name in FIELDS}
    except (OSError, ValueError, KeyError):
        return None  # none yet, unreadable, or written before a field existed: compute it again


def _given_labels(taxonomy: Taxonomy, col: dict[int, int], asset_ids: list[int] | None = None) -> dict[int, int]:
    """asset id -> the (single-label) tag of its current label, if active."""
    rows = Label.objects.filter(taxonomy=taxonomy, is_current=True)
    if asset_ids is not None:
        rows = rows.filter(asset_id__in=asset_ids)
    given: dict[int, int] = {}
    for asset_id, tag_id in rows.values_list("asset_id", "tags").order_by("asset_id", "tags"):
        if tag_id in col:
            given.setdefault(asset_id, tag_id)
    return given


def _compute(taxonomy: Taxonomy, tag_ids: list[int], key: str) -> dict[str, np.ndarray]:
    """Per labeled asset, most suspicious first: ids, given tag ids, scores, and why -- the
    check model's most likely other tag (``alt``, out-of-fold) with its probability, and the
    share of near neighbours labeled otherwise (``knn``; NaN: unknown)."""
    from ml.noise import suspicion_components

    col = {t: i for i, t in enumerate(tag_ids)}
    given = _given_labels(taxonomy, col)
    found, X = vectors.vectors_for(taxonomy.client_id, list(given))
    out = {name: np.zeros(0, np.float64) for name in FIELDS}
    if len(found) >= 4 and len({given[int(a)] for a in found}) >= 2:  # else nothing to compare a label with
        y = np.array([col[given[int(a)]] for a in found], dtype=np.int64)
        parts = suspicion_components(X, y, len(tag_ids), k_folds=min(5, len(found)),
                                     n_neighbors=min(10, len(found) - 1))
        others = np.where(np.eye(len(tag_ids), dtype=bool)[y], -1.0, np.nan_to_num(parts["oof_proba"], nan=-1.0))
        alt = others.argmax(axis=1)
        order = np.argsort(-parts["score"], kind="stable")
        out = {
            "ids": np.asarray(found, np.int64)[order], "given": np.asarray(tag_ids, np.int64)[y[order]],
            "scores": parts["score"][order], "alt": np.asarray(tag_ids, np.int64)[alt[order]],
            "alt_prob": others[np.arange(len(y)), alt][order], "knn": parts["knn_disagreement"][order],
        }
    path = _path(taxonomy)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, fsync=False) as f:  # recomputable; readers see old or new, never half
        np.savez(f, key=np.array(key), **out)
    return out


def _record_failure(taxonomy: Taxonomy, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"[:300]
    try:
        path = _path(taxonomy, "failed")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, fsync=False) as f:
            f.write(json.dumps({"at": time.time(), "error": message}).encode())
    except OSError:
        log.exception("could not record the failure of taxonomy %s's second look", taxonomy.pk)


def _recent_failure(taxonomy: Taxonomy) -> tuple[str, float] | None:
    """(error, when) of a computation that failed less than FAILED_RETRY_SECONDS ago."""
    try:
        data = json.loads(_path(taxonomy, "failed").read_text())
        error, at = str(data["error"]), float(data["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, or unreadable: try again
    return (error, at) if time.time() - at < FAILED_RETRY_SECONDS else None


def _compute_or_record(taxonomy: Taxonomy, tag_ids: list[int], key: str) -> dict[str, np.ndarray]:
    try:
        out = _compute(taxonomy, tag_ids, key)
    except Exception as exc:
        _record_failure(taxonomy, exc)
        raise
    _path(taxonomy, "failed").unlink(missing_ok=True)
    return out


def refresh(taxonomy: Taxonomy) -> bool:
    """Compute the scores when the stored ones are not those of the current labels (the
    worker's task; idempotent: a redelivered or repeated request finds them current). True
    when it computed; a failure is recorded for the page, then raised."""
    if taxonomy.multilabel:
        return False
    tag_ids = _tag_ids(taxonomy)
    try:
        key, _ = _current(taxonomy, tag_ids)
        stored = _read(taxonomy)
        if stored is not None and stored[0] == key:
            return False
        _compute_or_record(taxonomy, tag_ids, key)
        return True
    finally:
        _path(taxonomy, "pending").unlink(missing_ok=True)


def _ask_worker(taxonomy: Taxonomy) -> bool:
    """Send one refresh request unless one is already out (the marker file, created
    exclusively: concurrent page loads send one message). False when the broker is down."""
    from .. import tasks  # tasks import services: imported here to keep the graph acyclic

    marker = _path(taxonomy, "pending")
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        if time.time() - marker.stat().st_mtime > PENDING_STALE_SECONDS:
            marker.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return True  # asked already; the worker removes the marker when it is done
    if tasks.enqueue_second_look(taxonomy.pk):
        return True
    marker.unlink(missing_ok=True)  # the next page load tries again
    return False


def _tag_ids(taxonomy: Taxonomy) -> list[int]:
    return list(taxonomy.active_tags().values_list("id", flat=True))


def second_look(taxonomy: Taxonomy, limit: int = 50) -> Page:
    """The most suspicious current labels, left out: labels confirmed with "keep" (a re-save
    of the same tags, whose event has before == after) and labels changed since the scores
    were computed. Single-label taxonomies only: the check model and the neighbours vote for
    one tag per image, and judging a multi-label image by one of its tags flagged labels the
    model agreed with, then "fixed" them by dropping their other tags."""
    if taxonomy.multilabel:
        return Page(single_label_only=True)
    tag_ids = _tag_ids(taxonomy)
    key, n_labels = _current(taxonomy, tag_ids)
    page = Page(n_labels=n_labels)
    stored = _read(taxonomy)
    why = stored[1] if stored is not None else None
    if stored is not None and stored[0] == key:
        pass
    elif failure := _recent_failure(taxonomy):
        _say_failed(page, *failure)  # the last scores, if any, with the error; nothing is retried yet
    elif n_labels <= settings.TAGLOOP_SECOND_LOOK_INLINE:
        try:
            why = _compute_or_record(taxonomy, tag_ids, key)
        except Exception:  # the page still shows (the worker's failures Celery logs itself)
            log.exception("second look of taxonomy %s failed", taxonomy.pk)
            _say_failed(page, *(_recent_failure(taxonomy) or ("the computation failed", time.time())))
    else:
        page.refreshing = _ask_worker(taxonomy)
        page.unreachable = not page.refreshing
    if why is None:
        return page
    page.scored, page.n_scored = True, len(why["ids"])
    page.rows = _rows(taxonomy, tag_ids, why, limit)
    return page


def _say_failed(page: Page, error: str, at: float) -> None:
    page.failed = error
    page.failed_at = datetime.fromtimestamp(at, timezone.utc)
    page.retry_at = datetime.fromtimestamp(at + FAILED_RETRY_SECONDS, timezone.utc)


def _rows(taxonomy: Taxonomy, tag_ids: list[int], why: dict[str, np.ndarray], limit: int) -> list[dict]:
    ids, given = why["ids"], why["given"]
    col = {t: i for i, t in enumerate(tag_ids)}
    picked: list[int] = []
    step = max(limit * CHUNK, 1)
    for start in range(0, len(ids), step):  # usually one round: a few rows were kept or changed
        chunk = [int(a) for a in ids[start : start + step]]
        now = _given_labels(taxonomy, col, chunk)
        kept = {
            e.asset_id for e in LabelEvent.objects.filter(
                taxonomy=taxonomy, action=LabelEvent.Action.SET, label__is_current=True, asset_id__in=chunk
            ).only("asset_id", "before", "after")
            if e.before is not None and e.before == e.after
        }
        picked += [i for i in range(start, start + len(chunk))
                   if now.get(int(ids[i])) == int(given[i]) and int(ids[i]) not in kept]
        if len(picked) >= limit:
            break
    picked = picked[:limit]
    rows = describe(taxonomy, [int(ids[i]) for i in picked])
    out = [
        {**rows[int(ids[i])], "given": int(given[i]), "score": round(float(why["scores"][i]), 4),
         "alt": int(why["alt"][i]), "alt_prob": _share(why["alt_prob"][i]), "knn": _share(why["knn"][i])}
        for i in picked if int(ids[i]) in rows
    ]
    for row in out:
        row["fix"] = _fix(row)
    return out


def _fix(row: dict) -> int | None:
    """The tag "fix" applies: the live model's, when it disagrees with the label even though it
    was trained on it; else the check model's other tag (what raised the suspicion)."""
    if row["suggested"] is not None and row["suggested"] != row["given"]:
        return row["suggested"]
    return row["alt"] if row["alt_prob"] is not None and row["alt"] != row["given"] else None


def _share(value: float) -> float | None:
    """A probability or share as the page shows it; None where there was no evidence."""
    return None if not np.isfinite(value) or value < 0 else round(float(value), 3)
