"""ml.localmatch / ml.local_evidence on real FlickrLogos-27 photos: SIFT matches verified by one
similarity transform, the class-aware ratio test, leave-one-out scores, fusion weights."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ml import localmatch as lm
from tests.ml._embeddings import datasets_dir
from tests.ml.test_cli import _run

FL27 = datasets_dir() / "flickrlogos27"
pytestmark = pytest.mark.skipif(not (FL27 / "images").is_dir(), reason="FlickrLogos-27 not available")


def _photos(n: int, skip: int = 0) -> list[Path]:
    return sorted((FL27 / "images").glob("*.jpg"))[skip:skip + n]


def _warped(gray: np.ndarray, scale: float = 0.7, angle: float = 12.0) -> np.ndarray:
    """The photo smaller, turned and with a margin cut: what another shot of it looks like."""
    h, w = gray.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(gray, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return out[h // 10:, w // 10:]


def test_a_turned_smaller_copy_matches_its_photo_and_not_the_others():
    photos = [lm.read_gray(p) for p in _photos(6)]
    index = lm.MatchIndex([lm.extract(g) for g in photos], np.array([0, 1, 1, 1, 1, 1]), 2)
    s = index.scores(lm.extract(_warped(photos[0])))
    assert s[0] >= 20  # dozens of keypoints agree on one transform
    assert s[1] < 8  # unrelated photos: no consistent transform


def test_a_copy_found_twice_in_its_class_still_counts():
    # the same photo twice in class 0: a plain Lowe ratio test rejects every match (the two
    # nearest descriptors are equally close); the class-aware one compares with class 1
    g = lm.read_gray(_photos(1)[0])
    others = [lm.extract(lm.read_gray(p)) for p in _photos(3, skip=10)]
    index = lm.MatchIndex([lm.extract(g), lm.extract(g), *others], np.array([0, 0, 1, 1, 1]), 2)
    s = index.scores(lm.extract(_warped(g)))
    assert s[0] >= 20 and s[1] < 8


def test_leave_one_out_ignores_the_query_itself():
    kps = [lm.extract(lm.read_gray(p)) for p in _photos(4)]
    index = lm.MatchIndex(kps, np.array([0, 1, 1, 1]), 2)
    assert index.scores(kps[0])[0] >= 100  # itself: every keypoint
    assert index.scores(kps[0], exclude=0)[0] == 0  # nothing else in class 0


def test_leave_one_out_finds_other_photos_of_its_brand_as_an_index_without_it_would():
    # a photo's nearest descriptors are mostly its own: dropping them after a 10-neighbour
    # search left almost nothing to match (this photo scored 0 for its brand, not 9), so the
    # search itself skips them
    from ml.datasets import load_task

    task = load_task("fl27-28way", str(datasets_dir()))
    pick = np.concatenate([np.flatnonzero(task.y == 0)[1:4], *[np.flatnonzero(task.y == c)[:2] for c in (1, 2, 3)]])
    kps = [lm.extract(lm.read_gray(task.paths[i])) for i in pick]
    labels, q = task.y[pick], 2
    rest = [i for i in range(len(pick)) if i != q]
    without = lm.MatchIndex([kps[i] for i in rest], labels[rest], task.n_classes).scores(kps[q])
    loo = lm.MatchIndex(kps, labels, task.n_classes).scores(kps[q], exclude=q)
    assert loo[labels[q]] >= 8
    np.testing.assert_array_equal(loo, without)


def test_a_saved_index_loads_with_the_same_scores_including_the_approximate_one(tmp_path: Path, monkeypatch):
    kps = [lm.extract(lm.read_gray(p)) for p in _photos(8)]
    labels = np.array([0, 0, 1, 1, 2, 2, -1, 1])
    queries = [lm.extract(_warped(lm.read_gray(p))) for p in _photos(3)]
    for exact_below in (lm.EXACT_BELOW, 1000):  # flat, then IVF (its lists and nprobe must survive)
        monkeypatch.setattr(lm, "EXACT_BELOW", exact_below)
        index = lm.MatchIndex(kps, labels, 3)
        index.save(tmp_path / f"i{exact_below}.faiss")
        back = lm.MatchIndex.load(tmp_path / f"i{exact_below}.faiss")
        assert type(back.index) is type(index.index)
        for q in queries:
            assert (back.scores(q) == index.scores(q)).all() and (back.scores(q, 0) == index.scores(q, 0)).all()
        assert index.scores(queries[0])[0] >= 20


def test_templates_are_the_newest_labels_of_each_class_within_the_budget():
    from ml.local_evidence import choose_templates

    y = np.array([0, 0, 0, 1, 1, 2, 0])
    newness = np.array([1, 5, 3, 2, 9, 4, 7])
    assert choose_templates(y, newness, per_class=2, total=100).tolist() == [1, 3, 4, 5, 6]
    assert choose_templates(y, newness, per_class=5, total=3).tolist() == [4, 5, 6]  # 1 per class
    assert choose_templates(y[:0], newness[:0], 2, 10).tolist() == []


def test_background_samples_are_no_templates_and_empty_queries_score_nothing():
    kps = [lm.extract(lm.read_gray(p)) for p in _photos(1) + _photos(2, skip=10)]
    as_template = lm.MatchIndex(kps, np.array([0, 1, 1]), 2)
    as_background = lm.MatchIndex(kps, np.array([-1, 1, 1]), 2)
    assert as_template.scores(kps[0])[0] >= 100  # itself: every keypoint
    assert as_background.scores(kps[0])[0] == 0  # a background sample is never matched
    assert as_template.scores(lm.empty()).tolist() == [0.0, 0.0]
    assert len(lm.extract(np.full((64, 64), 128, np.uint8))) == 0  # flat grey: no keypoints


def test_a_broken_file_is_named_and_the_others_are_extracted(tmp_path: Path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = _photos(2)
    kps, problems = lm.extract_paths([good[0], bad, good[1]])
    assert [len(k) > 50 for k in kps] == [True, False, True]
    assert len(problems) == 1 and "broken.jpg" in problems[0]


def test_a_format_opencv_cannot_read_is_read_through_pillow(tmp_path: Path):
    from PIL import Image

    src = _photos(1)[0]
    Image.open(src).save(tmp_path / "logo.tga")  # Targa: Pillow reads it, OpenCV does not
    assert cv2.imread(str(tmp_path / "logo.tga"), cv2.IMREAD_GRAYSCALE) is None
    gray = lm.read_gray(tmp_path / "logo.tga")
    assert gray.shape == lm.read_gray(src).shape and len(lm.extract(gray)) > 50


def test_fusion_adds_evidence_in_log_space_and_weight_zero_changes_nothing():
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    s = np.array([[0.0, 0.0, 12.0], [0.0, 0.0, 0.0]])
    assert np.allclose(lm.fuse(p, s, 0.0), p)
    fused = lm.fuse(p, s, 0.5)
    assert fused[0].argmax() == 2 and np.allclose(fused[1], p[1])  # no inliers: head stands
    assert np.allclose(fused.sum(1), 1)
    # the cap: 200 inliers are no stronger than 20
    assert np.allclose(lm.fuse(p, s * 100, 0.5)[0], lm.fuse(p, np.minimum(s * 100, 20), 0.5)[0])


def test_the_weight_is_zero_when_inliers_mislead_and_positive_when_they_help():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = np.full((300, 3), 0.2)
    p[np.arange(300), y] = 0.6
    wrong = (y[:60] + 1) % 3  # the head is wrong on the first 60
    p[np.arange(60)] = 0.2
    p[np.arange(60), wrong] = 0.6
    acc = lambda t, pred: float((t == pred).mean())  # noqa: E731
    helpful = np.zeros((300, 3))
    helpful[np.arange(60), y[:60]] = 15  # inliers to the true class where the head errs
    w, _ = lm.pick_weight(p, helpful, y, acc)
    assert w > 0 and acc(y, lm.fuse(p, helpful, w).argmax(1)) == 1.0
    misleading = np.zeros((300, 3))
    misleading[np.arange(60, 120), (y[60:120] + 2) % 3] = 15
    assert lm.pick_weight(p, misleading, y, acc)[0] == 0.0


def test_fold_scores_find_the_brand_of_logo_photos_they_never_saw(tmp_path: Path):
    """Fold 0 of fl27-28way, six brands + none: test photos scored against the training part."""
    from ml.datasets import load_task
    from ml.local_evidence import fold_scores

    task = load_task("fl27-28way", datasets_dir())
    keep_names = {"Adidas", "Nike", "Puma", "Starbucks", "Ferrari", "Google", "none"}
    keep = np.isin(task.y, [task.labels.index(n) for n in keep_names])
    tr, te = (np.intersect1d(part, np.flatnonzero(keep)) for part in task.splits[0])
    sub = np.concatenate([tr, te])
    kps = [lm.empty()] * len(task.y)
    for i, kp in zip(sub, lm.cached_keypoints([task.paths[i] for i in sub], [task.shas[i] for i in sub], tmp_path)):
        kps[i] = kp
    s_test, s_train = fold_scores(task, kps, tr, te)
    assert s_test.shape == (len(te), task.n_classes) and s_train.shape == (len(tr), task.n_classes)
    none = task.labels.index("none")
    assert (s_test[:, none] == 0).all()  # "none" is no template
    brand = task.y[te] != none
    sure = s_test.max(1) >= 8
    assert sure[brand].mean() >= 0.3  # about half of the logo photos get clear matches
    assert (s_test[sure & brand].argmax(1) == task.y[te][sure & brand]).mean() >= 0.85
    assert sure[~brand].mean() <= 0.1  # photos without a logo rarely do
    assert (tmp_path / lm.CACHE_VERSION).is_dir()  # cached by content for the next run


def test_evaluate_cli_local_evidence_on_shoes(tmp_path: Path):
    out = tmp_path / "shoes_local.json"
    _run("ml.evaluate", "--task", "shoes-3", "--method", "head", "--local", "yes", "--json", str(out))
    r = json.loads(out.read_text())
    (fold,) = r["folds"]
    assert fold["local"]["weight"] in lm.WEIGHTS and len(fold["local"]["inner_scores"]) == len(lm.WEIGHTS)
    assert r["local_evidence"].startswith("SIFT inliers")
    assert r["accuracy"] >= 0.78  # a weight chosen on the training part cannot wreck the head
