"""ml.match_table: one search of every photo against the others stands in for an index per
template set (the simulated loop), with the same scores."""
from __future__ import annotations

import numpy as np
import pytest

from ml import localmatch as lm
from ml.datasets import load_task
from ml.features import make_store, spec_features
from ml.heads import train_head
from ml.local_evidence import choose_templates, fit_weight, scores_of
from ml.match_table import MatchTable
from ml.simulate import LocalLoop
from tests.ml._embeddings import datasets_dir

FL27 = datasets_dir() / "flickrlogos27"
pytestmark = pytest.mark.skipif(not (FL27 / "images").is_dir(), reason="FlickrLogos-27 not available")


@pytest.fixture(scope="module")
def brands():
    """Six brands, eight distinct photos each (real FlickrLogos-27), with their keypoints."""
    task = load_task("fl27-28way", str(datasets_dir()))
    pick = np.concatenate([np.flatnonzero(task.y == c)[:8] for c in range(6)])
    kps = [lm.extract(lm.read_gray(task.paths[i])) for i in pick]
    return task, pick, kps


@pytest.fixture
def exact(monkeypatch):
    """Flat search in both: two approximate (IVF) indexes over different sets may differ in a
    neighbour or two, which is not what these tests are about."""
    monkeypatch.setattr(lm, "EXACT_BELOW", 10**9)


def _index_scores(kps, labels, n_classes):
    index = lm.MatchIndex(kps, labels, n_classes)
    return np.array([index.scores(kp, exclude=i if labels[i] >= 0 else None) for i, kp in enumerate(kps)])


def test_searched_deep_enough_the_table_gives_an_index_of_the_templates_scores(brands, exact):
    task, pick, kps = brands
    sub = [i for i in range(len(pick)) if task.y[pick[i]] < 2 and i % 8 < 5]  # two brands, 5 photos each
    kps = [kps[i] for i in sub]
    labels = np.where(np.arange(len(sub)) % 2 == 0, task.y[pick[sub]], -1)
    table = MatchTable(kps, depth=sum(len(k) for k in kps))
    want = _index_scores(kps, labels, task.n_classes)
    assert (want.max(1) >= 8).sum() >= 3  # real logo matches, not a table of zeros
    np.testing.assert_array_equal(table.scores(labels, task.n_classes), want)


def test_at_its_default_depth_the_table_finds_the_same_brands_for_other_template_sets(brands, exact):
    task, pick, kps = brands
    table = MatchTable(kps)  # searched once, read for every template set below
    for seed in (1, 2, 3):
        labels = np.where(np.random.default_rng(seed).random(len(pick)) < 0.3, task.y[pick], -1)
        got, want = table.scores(labels, task.n_classes), _index_scores(kps, labels, task.n_classes)
        strong = want.max(1) >= 8
        assert strong.sum() >= 5
        np.testing.assert_array_equal(got[strong].argmax(1), want[strong].argmax(1))
        assert (got == want).mean() >= 0.98


def test_the_loop_weighs_and_fuses_the_matches_as_the_product_does(brands, exact):
    task, pick, kps = brands
    store = make_store()  # Lite0 centre crops, cached by content under ~/.cache/tagloop
    store.ensure([task.paths[i] for i in pick], [task.shas[i] for i in pick], ["center"])
    X = spec_features(store, [task.shas[i] for i in pick], "center:mean")
    y, n = task.y[pick], task.n_classes
    lab = np.flatnonzero(np.arange(len(pick)) % 8 < 4)  # four labels per brand
    rest = np.setdiff1d(np.arange(len(pick)), lab)
    P = train_head(X[lab], y[lab], n, seed=0).predict_proba(X[rest])
    loop = LocalLoop(MatchTable(kps), n)
    [fused] = loop.fuse(X[lab], y[lab], lab, [(P, rest)])
    # the product's steps (labeling.services.localmatch.fit), one index of the templates
    tpl = choose_templates(y[lab], np.arange(len(lab)))
    index = lm.MatchIndex([kps[i] for i in lab[tpl]], y[lab][tpl], n)
    where = {int(i): j for j, i in enumerate(lab[tpl])}
    w, _, _ = fit_weight(index, [kps[i] for i in lab], [where.get(int(i)) for i in lab], y[lab], X[lab])
    assert loop.weights == [w] and w > 0
    np.testing.assert_allclose(fused, lm.fuse(P, scores_of(index, [kps[i] for i in rest], [None] * len(rest)), w))
