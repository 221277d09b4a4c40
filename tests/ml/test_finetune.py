"""A short CPU fine-tune of the top blocks must beat the head-only baseline on the same data.

Small on purpose (20 shoes per brand, a few epochs, cached frozen trunk) so that it runs in
about a minute on 2 CPU cores; the full-size numbers are in docs/ml-results.md.
"""
from __future__ import annotations

import time

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


def test_short_finetune_beats_head_only(shoes):
    task, tr, te = shoes
    store = FeatureStore()
    store.ensure(task.paths, task.shas, ["center"])
    X = spec_features(store, task.shas, "center:mean")
    head_acc = float((train_head(X[tr], task.y[tr], task.n_classes).predict_proba(X[te]).argmax(1)
                      == task.y[te]).mean())

    t0 = time.time()
    cfg = FinetuneConfig(epochs=6, trainable_blocks=3, cached_views=4, batch_size=16,
                         early_stop=6, val_fraction=0.2, seed=0)
    model, curve = finetune([task.paths[i] for i in tr], task.y[tr], task.n_classes, cfg=cfg)
    test_imgs, _ = load_images([task.paths[i] for i in te], cfg.max_side)
    ft_acc = float((predict_proba(model, test_imgs, cfg).argmax(1) == task.y[te]).mean())
    print(f"head-only {head_acc:.3f} vs fine-tuned {ft_acc:.3f} in {time.time() - t0:.0f} s")
    seconds = time.time() - t0

    assert curve and {"train_loss", "val_loss", "val_acc", "lr"} <= set(curve[0])
    assert all(np.isfinite(r["train_loss"]) for r in curve)
    assert ft_acc > head_acc, (ft_acc, head_acc)
    assert seconds < 300, seconds  # ~1 min on an idle 2-core box
