"""Local-match scores for many template sets over one image collection (the simulated loop).

``ml.simulate --local yes`` asks, every round, "what are each photo's inlier scores against the
photos labelled so far?". Building a ``MatchIndex`` of the labelled photos and searching every
photo's descriptors again each round would cost minutes per round. Instead every descriptor is
searched once against the whole collection (``depth`` nearest neighbours each), and a round
keeps, per descriptor, the first ``NEIGHBOURS`` of those that belong to a current template
-- the list an index of the templates alone would have returned -- and applies the same
class-aware ratio test and RANSAC (ml.localmatch). RANSAC results are memoised per set of
tentative matches: most pairs of a photo and a template look the same from one round to the next.

Where fewer than ``NEIGHBOURS`` template descriptors are among a descriptor's ``depth``
nearest, the missing ones are farther than the ``depth``-th, which is a lower bound for the
ratio test's "nearest other class" distance (``ratio_matches(floor=...)``); the index of the
templates would have listed a farther one and so accepted at least as many matches. So the
table is exact where templates are dense and at most slightly stricter where they are few.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ml.localmatch import (NEIGHBOURS, Keypoints, ann_index, best_per_class, inliers, ratio_matches, skip_ids,
                           stack, tolerance)


class MatchTable:
    """Every descriptor of ``images`` against all the others, searched once."""

    def __init__(self, images: Sequence[Keypoints], depth: int = 64) -> None:
        self.n_images = len(images)
        keep = [i for i, kp in enumerate(images) if len(kp)]
        self.owner, self.pts = stack(images, keep)
        self.tol = np.array([tolerance(kp.pts) for kp in images])
        rows = len(self.owner)
        depth = min(depth, rows)
        self.dist = np.full((rows, depth), np.inf, np.float32)
        self.nn = np.zeros((rows, depth), np.int32)
        if rows:
            index = ann_index([images[i].desc for i in keep])
            start = 0
            for i in keep:
                # an image's own descriptors are left out of the search: they are mostly its
                # nearest, and it is never its own template anyway
                end = start + len(images[i])
                d, n = index.search(images[i].desc.astype(np.float32), depth, params=skip_ids(index, start, end))
                self.dist[start:end] = np.where(n >= 0, d, np.inf)
                self.nn[start:end] = n.clip(0)
                start = end
        self.nn_owner = self.owner[self.nn] if rows else np.zeros((0, depth), np.int32)
        self._memo: dict[tuple[float, bytes, bytes], int] = {}

    def scores(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """(n_images, n_classes): each image's most inliers to one template per class, the
        templates being the images with ``labels >= 0``; an image is never its own template (the
        leave-one-out score of a labelled image). What ``MatchIndex(images, labels, n_classes)
        .scores(images[i], exclude=i)`` gives, from the precomputed neighbours."""
        labels = np.asarray(labels)
        out = np.zeros((self.n_images, n_classes))
        if not len(self.owner):
            return out
        valid = (labels[self.nn_owner] >= 0) & (self.nn_owner != self.owner[:, None]) & np.isfinite(self.dist)
        pos = np.cumsum(valid, axis=1, dtype=np.int32) - 1
        take = valid & (pos < NEIGHBOURS)
        r, c = np.nonzero(take)
        rows = np.unique(r)  # descriptors with at least one template neighbour
        at = np.searchsorted(rows, r)
        dist = np.full((len(rows), NEIGHBOURS), np.inf, np.float32)
        nn = np.zeros((len(rows), NEIGHBOURS), np.int32)
        dist[at, pos[r, c]] = self.dist[r, c]
        nn[at, pos[r, c]] = self.nn[r, c]
        # a row with all NEIGHBOURS slots filled saw what the templates' own index would list;
        # a shorter one knows only that the rest lie beyond its depth-th neighbour
        floor = np.where(valid[rows].sum(1) >= NEIGHBOURS, -np.inf, self.dist[rows, -1])
        ok = ratio_matches(dist, labels[self.owner[nn]], floor)
        qi, kk = np.nonzero(ok)
        src, dst = rows[qi], nn[qi, kk]
        # rows ascend, so each query image's matches come together, in the order its own
        # index search would list them
        cuts = np.flatnonzero(np.diff(self.owner[src])) + 1
        for s, d in zip(np.split(src, cuts), np.split(dst, cuts)):
            if len(s):
                q, t = self.owner[s[0]], self.owner[d]
                out[q] = best_per_class(self.pts[s], self.pts[d], t, labels[t], float(self.tol[q]), n_classes,
                                        self._inliers)
        return out

    def _inliers(self, src: np.ndarray, dst: np.ndarray, tol: float) -> int:
        """ml.localmatch.inliers, once per distinct set of matches: most pairs of a photo and
        a template look the same from one round to the next."""
        key = (tol, src.tobytes(), dst.tobytes())
        if key not in self._memo:
            self._memo[key] = inliers(src, dst, tol)
        return self._memo[key]
