"""Images for ml.finetune: decoded once and kept downscaled in memory, augmented training
crops (random resized crops, flips, colour jitter, crops around annotated logo boxes) and the
deterministic evaluation crops."""
from __future__ import annotations

import math
import random
import sys
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from tqdm import tqdm

from ml.features import exif_rotated, view_crops
from ml.preprocess import load_rgb, normalize, resize_crop

if TYPE_CHECKING:
    from ml.finetune import FinetuneConfig


def load_images(paths: Sequence[str], max_side: int) -> tuple[list[Image.Image], np.ndarray]:
    """Decode once, keep downscaled copies in memory; returns (images, scale vs. file pixels).

    The scale is NaN for EXIF-rotated files: boxes drawn on the stored pixels point elsewhere
    once ``load_rgb`` has turned the image upright, so (as in ml.features) they are not used.
    """
    imgs, scales = [], []
    for p in tqdm(paths, desc="decode", unit="img", file=sys.stderr, leave=False):
        img = load_rgb(p, draft_size=max_side)
        w0 = max(img.size)
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        with Image.open(p) as raw:  # boxes live in stored-file pixels
            scale = max(img.size) / max(raw.size) if w0 else 1.0
            scales.append(math.nan if exif_rotated(raw) else scale)
        imgs.append(img)
    return imgs, np.asarray(scales, np.float64)


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices with ``fraction`` of the images held out, stratified when
    the data allow it: every present class needs >= 2 images, and both parts at least one
    image per class (sklearn's rule: 20 classes x 3 images cannot give a stratified 15 %).
    Otherwise the split is random, and why is printed, instead of failing the fine-tune."""
    y = np.asarray(y, np.int64)
    counts = np.bincount(y)
    present = int((counts > 0).sum())
    n_val = math.ceil(fraction * len(y))  # how train_test_split sizes a fractional test_size
    reason = ("a class has a single image" if counts[counts > 0].min() < 2 else
              f"{n_val} validation / {len(y) - n_val} training images for {present} classes"
              if min(n_val, len(y) - n_val) < present else None)
    if reason:
        print(f"  validation split not stratified: {reason}", file=sys.stderr)
    return train_test_split(np.arange(len(y)), test_size=fraction, stratify=None if reason else y,
                            random_state=seed)


class TrainSet(Dataset):
    """Augmented training crops; with probability box_crop_p a crop around a logo box."""

    def __init__(self, imgs, y, boxes, scales, cfg: FinetuneConfig) -> None:
        self.imgs, self.y, self.boxes, self.scales, self.cfg = imgs, y, boxes, scales, cfg
        s = cfg.image_size
        self.rrc = T.RandomResizedCrop(s, scale=(cfg.min_scale, 1.0), antialias=True)
        self.box_resize = T.Resize((s, s), antialias=True)
        self.post = T.Compose([T.RandomHorizontalFlip(),
                               T.ColorJitter(0.3, 0.3, 0.3, 0.05)])

    def __len__(self) -> int:
        return len(self.imgs)

    def _box_crop(self, img: Image.Image, box: np.ndarray) -> Image.Image:
        x1, y1, x2, y2 = box
        ctx = random.uniform(1.2, 3.0)  # random context: the logo at different scales
        side = max(x2 - x1, y2 - y1) * ctx
        cx = (x1 + x2) / 2 + random.uniform(-0.25, 0.25) * side
        cy = (y1 + y2) / 2 + random.uniform(-0.25, 0.25) * side
        w, h = img.size
        crop = (max(0, cx - side / 2), max(0, cy - side / 2), min(w, cx + side / 2), min(h, cy + side / 2))
        return self.box_resize(img.crop(tuple(int(round(c)) for c in crop)))

    def __getitem__(self, i: int):
        img = self.imgs[i]
        # NaN scale: boxes do not map onto this (EXIF-rotated) image, see load_images
        b = self.boxes[i] if self.boxes is not None and np.isfinite(self.scales[i]) else None
        if b is not None and len(b) and random.random() < self.cfg.box_crop_p:
            img = self._box_crop(img, b[random.randrange(len(b))] * self.scales[i])
        else:
            img = self.rrc(img)
        x = normalize(np.asarray(self.post(img), dtype=np.uint8))
        return torch.from_numpy(x), int(self.y[i])


def eval_inputs(imgs: Sequence[Image.Image], cfg: FinetuneConfig) -> np.ndarray:
    """Deterministic eval crops, uint8 (n, s, s, 3)."""
    s = cfg.image_size
    if cfg.eval_view == "full":
        crops = [im.resize((s, s), Image.Resampling.BICUBIC) for im in imgs]
    else:
        crops = [resize_crop(im, s) for im in imgs]
    return np.stack([np.asarray(c, dtype=np.uint8) for c in crops])


def multiview_inputs(imgs: Sequence[Image.Image], views: Sequence[str],
                     size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every crop of every view (ml.features.view_crops: center, flip, full, tiles2, ...) of
    each image: uint8 (m, size, size, 3), the image index and the view index of each crop."""
    crops, owner, view_of = [], [], []
    for i, img in enumerate(imgs):
        for v, view in enumerate(views):
            c = view_crops(img, view, size=size)
            crops.append(c)
            owner += [i] * len(c)
            view_of += [v] * len(c)
    empty = np.zeros((0, size, size, 3), np.uint8)
    return (np.concatenate(crops) if crops else empty, np.asarray(owner, np.int64),
            np.asarray(view_of, np.int64))
