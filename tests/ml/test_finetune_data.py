"""ml.finetune_data: the validation hold-out and the decoded training images (fast, no model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.finetune import FinetuneConfig
from ml.finetune_data import TrainSet, holdout_split, load_images


def test_holdout_split_is_stratified_when_every_class_fits_in_both_parts():
    y = np.repeat(np.arange(3), 20)
    tr, va = holdout_split(y, 0.15, seed=0)
    assert sorted([*tr, *va]) == list(range(60)) and len(va) == 9
    assert np.bincount(y[va], minlength=3).tolist() == [3, 3, 3]


def test_holdout_split_falls_back_to_random_with_more_classes_than_validation_images(capsys):
    y = np.arange(60) % 20  # 20 classes x 3 images: 9 validation images cannot hold 20 classes
    tr, va = holdout_split(y, 0.15, seed=0)
    assert sorted([*tr, *va]) == list(range(60)) and len(va) == 9
    assert "not stratified: 9 validation / 51 training images for 20 classes" in capsys.readouterr().err


def test_holdout_split_falls_back_to_random_when_a_class_has_one_image(capsys):
    tr, va = holdout_split(np.array([0] * 10 + [1]), 0.2, seed=0)
    assert sorted([*tr, *va]) == list(range(11))
    assert "a class has a single image" in capsys.readouterr().err


def _save_jpeg(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (200, 100), (120, 30, 200)).save(path, exif=exif)
    return path


def test_boxes_of_exif_rotated_files_are_not_used_for_crops(tmp_path):
    paths = [_save_jpeg(tmp_path / "upright.jpg", 1), _save_jpeg(tmp_path / "rotated.jpg", 6)]
    imgs, scales = load_images([str(p) for p in paths], max_side=100)
    assert [im.size for im in imgs] == [(100, 50), (50, 100)]  # orientation 6 is shown turned
    assert scales[0] == pytest.approx(0.5) and np.isnan(scales[1])  # stored-pixel boxes: unusable
    box = [np.array([[150.0, 0.0, 200.0, 50.0]])] * 2  # drawn on the stored pixels
    ds = TrainSet(imgs, np.array([0, 1]), box, scales, FinetuneConfig(box_crop_p=1.0, image_size=32))
    for i in range(2):
        x, label = ds[i]
        assert tuple(x.shape) == (3, 32, 32) and label == i and bool(x.isfinite().all())
