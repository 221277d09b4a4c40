"""A short CPU fine-tune of the top blocks must beat the head-only baseline on the same data.

Small on purpose (20 shoes per brand, a few epochs, cached frozen trunk) so that it runs in
about a minute on 2 CPU cores; the full-size numbers are in docs/ml-results.md.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from ml.datasets import load_task
from ml.features import FeatureStore, spec_features
from ml.finetune import FinetuneConfig, finetune, load_images, predict_proba
from ml.heads import train_head

from tests.ml._embeddings import datasets_dir

PER_CLASS = 20


@pytest.fixture(scope="module")
def shoes():
    if not (datasets_dir() / "shoes").is_dir():
        pytest.skip("shoes dataset not available")
    task = load_task("shoes-3", datasets_dir())
    tr, te = task.splits[0]
    rng = np.random.default_rng(0)
    sub = np.concatenate([rng.choice(tr[task.y[tr] == c], PER_CLASS, replace=False)
                          for c in range(task.n_classes)])
    return task, sub, te


@pytest.fixture(scope="module")
def tuned(shoes):
    """(model, cfg, learning curve, test images, seconds): one short fine-tune for the module."""
    task, tr, te = shoes
    t0 = time.time()
    cfg = FinetuneConfig(epochs=6, trainable_blocks=3, cached_views=4, batch_size=16,
                         early_stop=6, val_fraction=0.2, seed=0)
    model, curve = finetune([task.paths[i] for i in tr], task.y[tr], task.n_classes, cfg=cfg)
    test_imgs, _ = load_images([task.paths[i] for i in te], cfg.max_side)
    return model, cfg, curve, test_imgs, time.time() - t0


def test_short_finetune_beats_head_only(shoes, tuned):
    task, tr, te = shoes
    model, cfg, curve, test_imgs, seconds = tuned
    store = FeatureStore()
    store.ensure(task.paths, task.shas, ["center"])
    X = spec_features(store, task.shas, "center:mean")
    head_acc = float((train_head(X[tr], task.y[tr], task.n_classes).predict_proba(X[te]).argmax(1)
                      == task.y[te]).mean())
    ft_acc = float((predict_proba(model, test_imgs, cfg).argmax(1) == task.y[te]).mean())
    print(f"head-only {head_acc:.3f} vs fine-tuned {ft_acc:.3f} in {seconds:.0f} s")

    assert curve and {"train_loss", "val_loss", "val_acc", "lr"} <= set(curve[0])
    assert all(np.isfinite(r["train_loss"]) for r in curve)
    assert ft_acc > head_acc, (ft_acc, head_acc)
    assert seconds < 300, seconds  # ~1 min on an idle 2-core box


def test_multiview_prediction_averages_the_views_crops(shoes, tuned):
    task, _, te = shoes
    model, cfg, _, test_imgs, _ = tuned
    imgs = test_imgs[:12]
    # "center,flip" is exactly the single-view path with its mirrored copy (tta_flip)
    two = predict_proba(model, imgs, replace(cfg, eval_views="center,flip"))
    np.testing.assert_allclose(two, predict_proba(model, imgs, cfg), atol=1e-5)
    # tiles: 4 crops at 2x resolution, averaged among themselves first, then with the others
    multi = predict_proba(model, imgs, replace(cfg, eval_views="center,flip,full,tiles2"))
    tiles = predict_proba(model, imgs, replace(cfg, eval_views="tiles2"))
    full = predict_proba(model, imgs, replace(cfg, eval_views="full"))
    np.testing.assert_allclose(multi, (2 * two + full + tiles) / 4, atol=1e-5)
    np.testing.assert_allclose(multi.sum(1), 1, atol=1e-5)
    assert np.abs(tiles - two).max() > 1e-3  # the tiles are other pixels, not the same crop again
    with pytest.raises(ValueError, match="eval_views: boxes not usable"):
        replace(cfg, eval_views="center,boxes")


def test_a_few_images_of_many_classes_fine_tune_on_a_random_validation_split(
        capsys, monkeypatch, tmp_path) -> None:
    import tempfile

    from PIL import Image

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the ONNX trunk is exported
    imgs = [Image.new("RGB", (64, 64), (4 * i, 255 - 4 * i, 37 * i % 256)) for i in range(60)]
    y = np.arange(60) % 20  # 20 classes x 3 images: 9 validation images cannot cover 20 classes
    cfg = FinetuneConfig(epochs=1, trainable_blocks=1, cached_views=2, image_size=64)
    model, curve = finetune([""] * 60, y, 20, images=imgs, scales=np.ones(60), cfg=cfg)
    assert len(curve) == 1 and np.isfinite(curve[0]["train_loss"]) and model.fc.out_features == 20
    assert "validation split not stratified" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.onnx"))  # the exported trunk is not left behind
