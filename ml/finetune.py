"""Fine-tune the top blocks of a backbone (frozen stem) with a dropout + linear head.

Why: a linear head on frozen ImageNet features cannot re-learn what the features ignore
(the fine print of a shoe logo, a 20-pixel brand mark). Unfreezing the last few blocks
adapts the high-level filters while the frozen stem keeps the generic low-level ones, which
is what a few hundred labelled images can afford without overfitting.

Training recipe: augmentation (random resized crops, flips, colour jitter, crops around
annotated logo boxes), balanced sampling or class weights, dropout, AdamW, LR x0.1 on a
validation plateau, early stopping on validation balanced accuracy, fixed seeds. The
per-epoch learning curve is returned as data. CPU works (slow); CUDA uses bf16 autocast.
"""
from __future__ import annotations

import copy
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from ml.backbones import load_backbone
from ml.features import VIEWS
from ml.finetune_data import (TrainSet, eval_inputs, holdout_split, load_images,  # noqa: F401 - API
                              multiview_inputs)
from ml.finetune_trunk import FrozenTrunk
from ml.metrics import balanced_accuracy
from ml.preprocess import normalize


@dataclass
class FinetuneConfig:
    backbone: str = "efficientnet-lite0"
    trainable_blocks: int = 4  # last MBConv blocks + head conv; the rest is the frozen stem
    image_size: int = 224  # train/eval resolution; >224 helps small logos (fully convolutional)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3  # head
    backbone_lr: float = 2e-4  # unfrozen blocks: smaller, they start from good weights
    weight_decay: float = 1e-4
    dropout: float = 0.3
    label_smoothing: float = 0.1
    balance: str = "sampler"  # "sampler" (balanced batches) | "weights" (loss weights) | "none"
    min_scale: float = 0.35  # RandomResizedCrop lower area bound
    box_crop_p: float = 0.3  # chance to train on a crop around an annotated logo box
    plateau_patience: int = 2  # epochs without val-loss improvement before LR x0.1
    early_stop: int = 5  # epochs without val improvement before stopping
    val_fraction: float = 0.15  # held out of the training data when no val set is given
    eval_view: str = "center"  # "center" crop or "full" (whole image squashed, keeps borders)
    # Comma-separated ml.features views to average at prediction time instead of eval_view,
    # e.g. "center,flip,full,tiles2,tiles3": softmax averaged over each view's crops, then over
    # the views. Tiles show a small logo 2-3x larger; give max_side >= 3 * image_size for them.
    eval_views: str = ""
    tta_flip: bool = True
    max_side: int = 512  # images are kept in memory downscaled to this long side
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    # "auto": on CPU, run the frozen trunk once per augmented crop (ONNX) and train the top
    # on cached outputs; "yes"/"no" force it. cached_views = augmented crops per image.
    cached_trunk: str = "auto"
    cached_views: int = 8
    probe_init: bool = True  # LP-FT (cached-trunk mode): fc starts from a linear probe

    def __post_init__(self) -> None:
        eval_view_list(self.eval_views)  # a typo fails here, not after the training


def eval_view_list(eval_views: str) -> list[str]:
    views = [v.strip() for v in eval_views.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS or v == "boxes"]
    if bad:  # boxes are training crops: a test image has no annotation
        raise ValueError(f"eval_views: {', '.join(bad)} not usable; choose from "
                         f"{', '.join(v for v in VIEWS if v != 'boxes')}")
    return views


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Classifier(nn.Module):
    """Backbone -> dropout -> linear, split into a frozen trunk and a trainable top.

    `forward_frozen` (stem + frozen blocks) has no trainable weights and frozen BatchNorm,
    so its output for a given crop never changes during training: the cached-trunk mode
    computes it once per augmented crop (ONNX, ~10x faster than torch on CPU) and trains
    only `forward_top` -- what makes fine-tuning affordable on a 2-core CPU.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, dropout: float,
                 trainable_blocks: int) -> None:
        super().__init__()
        self.backbone = backbone.freeze_stem(trainable_blocks)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.dim, n_classes)
        blocks = getattr(getattr(backbone, "net", None), "_blocks", None)
        # EfficientNet-Lite units = [stem, *blocks, head]: the last n-1 blocks are trainable
        self.split = (max(0, len(blocks) - max(trainable_blocks - 1, 0)) if blocks is not None
                      and trainable_blocks >= 1 else None)

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        net = self.backbone.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:self.split]:
            x = block(x, drop_connect_rate=0.0)
        return x

    def pooled_top(self, a: torch.Tensor) -> torch.Tensor:
        net = self.backbone.net
        n = len(net._blocks)
        for i, block in enumerate(net._blocks[self.split:], start=self.split):
            # the package's stochastic depth schedule (rate grows with depth), train only
            rate = net._global_params.drop_connect_rate * i / n if self.training else 0.0
            a = block(a, drop_connect_rate=rate)
        a = net._swish(net._bn1(net._conv_head(a)))
        return a.mean(dim=(2, 3))

    def forward_top(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pooled_top(a)))

    @torch.no_grad()
    def init_fc_from_probe(self, feats: np.ndarray, y: np.ndarray, seed: int,
                           groups: np.ndarray | None = None) -> None:
        """LP-FT: start the linear layer from a probe (ml.heads.train_head) on the current
        features, so fine-tuning starts where the head-only baseline ends instead of from a
        random layer whose gradients would first scramble the pretrained top blocks.
        ``groups``: source image of each row, so the probe's L2 CV keeps an image's views together."""
        from ml.heads import train_head

        h = train_head(feats, y, self.fc.out_features, seed=seed, groups=groups)
        W = h.weight / h.scale[:, None]  # logits = ((x - mean) / scale) @ W + b
        self.fc.weight.copy_(torch.from_numpy(W.T.astype(np.float32)))
        b = (h.bias - h.mean @ W).astype(np.float32)
        fixed = getattr(h, "fixed_proba", None)  # classes without training data: never predicted
        if fixed is not None:
            b[np.nan_to_num(np.asarray(fixed, np.float64), nan=1.0) == 0] = -20.0
        self.fc.bias.copy_(torch.from_numpy(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split is None:  # non-EfficientNet backbones: plain path
            return self.fc(self.dropout(self.backbone(x)))
        return self.forward_top(self.forward_frozen(x))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _eval_activations(trunk: FrozenTrunk, imgs: Sequence[Image.Image], cfg: FinetuneConfig) -> np.ndarray:
    """(n, 2 if tta else 1, C, h, w) trunk outputs of the eval crop (and its mirror)."""
    x = normalize(eval_inputs(imgs, cfg))
    views = [x, x[..., ::-1].copy()] if cfg.tta_flip else [x]
    return np.stack([np.concatenate([trunk(v[s:s + 64]) for s in range(0, len(v), 64)])
                     for v in views], axis=1)


@torch.no_grad()
def _proba_from(model: Classifier, x: torch.Tensor, top_only: bool) -> torch.Tensor:
    fwd = model.forward_top if top_only else model
    return fwd(x).float().softmax(1)


@torch.no_grad()
def predict_proba(model: Classifier, imgs: Sequence[Image.Image], cfg: FinetuneConfig,
                  device: torch.device | None = None) -> np.ndarray:
    """Softmax probabilities (n, k); averaged with the mirrored image when cfg.tta_flip."""
    device = device or next(model.parameters()).device
    model.eval()
    if cfg.eval_views:
        return _multiview_proba(model, imgs, cfg, device)
    trunk = getattr(model, "trunk", None)
    if trunk is not None:  # cached-trunk model: same frozen part, via onnxruntime
        A = _eval_activations(trunk, imgs, cfg)
        return np.mean([_proba_from(model, torch.from_numpy(A[:, v]), True).numpy()
                        for v in range(A.shape[1])], axis=0)
    u8 = eval_inputs(imgs, cfg)
    out = []
    for s in range(0, len(u8), 64):
        x = torch.from_numpy(normalize(u8[s:s + 64])).to(device)
        with _autocast(device):
            views = [x, x.flip(3)] if cfg.tta_flip else [x]
            out.append(torch.stack([_proba_from(model, v, False) for v in views]).mean(0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.fc.out_features), np.float32)


@torch.no_grad()
def _multiview_proba(model: Classifier, imgs: Sequence[Image.Image], cfg: FinetuneConfig,
                     device: torch.device) -> np.ndarray:
    views = eval_view_list(cfg.eval_views)
    k = model.fc.out_features
    out = np.zeros((len(imgs), k))
    trunk = getattr(model, "trunk", None)
    for s in range(0, len(imgs), 16):  # 16 images' crops at a time: bounded memory
        u8, owner, view_of = multiview_inputs(imgs[s:s + 16], views, cfg.image_size)
        p = []
        for b in range(0, len(u8), 64):
            x = normalize(u8[b:b + 64])
            if trunk is not None:
                p.append(_proba_from(model, torch.from_numpy(trunk(x)), True).numpy())
            else:
                with _autocast(device):
                    p.append(_proba_from(model, torch.from_numpy(x).to(device), False).cpu().numpy())
        p = np.concatenate(p) if p else np.zeros((0, k))
        # mean over each (image, view)'s crops, then over the views
        sums, counts = np.zeros((16, len(views), k)), np.zeros((16, len(views), 1))
        np.add.at(sums, (owner, view_of), p)
        np.add.at(counts, (owner, view_of), 1)
        n = min(16, len(imgs) - s)
        out[s:s + n] = (sums[:n] / np.maximum(counts[:n], 1)).mean(axis=1)
    return out.astype(np.float32)


def _class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)


def _cached_batches(trunk: FrozenTrunk, ds: TrainSet, cfg: FinetuneConfig, n_classes: int):
    """Cached-trunk mode: trunk outputs of cfg.cached_views augmented crops per image,
    computed once; each epoch draws one of them per image (fresh augmentation would need
    the trunk again). Returns an epoch -> batches generator."""
    n, V = len(ds), cfg.cached_views
    acts = None
    for v in tqdm(range(V), desc="trunk views", unit="view", file=sys.stderr, leave=False):
        x = np.stack([ds[i][0].numpy() for i in range(n)])
        a = np.concatenate([trunk(x[s:s + 64]) for s in range(0, n, 64)]).astype(np.float16)
        acts = np.empty((n, V, *a.shape[1:]), np.float16) if acts is None else acts
        acts[:, v] = a
    if cfg.probe_init:
        model = trunk.model
        model.eval()
        with torch.no_grad():
            feats = np.concatenate([model.pooled_top(torch.from_numpy(
                acts[s:s + 64].reshape(-1, *acts.shape[2:]).astype(np.float32))).numpy()
                for s in range(0, n, 64)])
        # rows are image-major (V views per image): one group per source image
        model.init_fc_from_probe(feats, np.repeat(ds.y, V), cfg.seed, groups=np.repeat(np.arange(n), V))
    y = torch.as_tensor(ds.y)
    w = _class_weights(ds.y, n_classes)[ds.y]
    g = np.random.default_rng(cfg.seed)

    def epoch():
        order = (g.choice(n, size=n, p=w / w.sum()) if cfg.balance == "sampler"
                 else g.permutation(n))
        pick = g.integers(0, V, size=n)
        for s in range(0, n, cfg.batch_size):
            i = order[s:s + cfg.batch_size]
            if len(i) < 2:  # BatchNorm in the trainable blocks needs > 1 sample
                continue
            yield torch.from_numpy(acts[i, pick[s:s + cfg.batch_size]].astype(np.float32)), y[i]
    return epoch


def finetune(
    train_paths: Sequence[str], y_train: np.ndarray, n_classes: int, *,
    val_paths: Sequence[str] | None = None, y_val: np.ndarray | None = None,
    boxes: Sequence[np.ndarray] | None = None, cfg: FinetuneConfig | None = None,
    images: Sequence[Image.Image] | None = None, scales: np.ndarray | None = None,
) -> tuple[Classifier, list[dict]]:
    """Fine-tune; returns (best model on validation, learning curve).

    Without `val_paths`, `cfg.val_fraction` of the training data (stratified when possible,
    see `holdout_split`) is held out for LR scheduling / early stopping, so the caller's test
    data is never looked at.
    `images`/`scales` (from `load_images`) skip decoding when the caller already has them.
    """
    cfg = cfg or FinetuneConfig()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    y_train = np.asarray(y_train, np.int64)
    if images is None:
        images, scales = load_images(train_paths, cfg.max_side)
    images, scales = list(images), np.asarray(scales if scales is not None else np.ones(len(images)))
    boxes = list(boxes) if boxes is not None else [np.zeros((0, 4))] * len(images)
    if val_paths is None:
        tr, va = holdout_split(y_train, cfg.val_fraction, cfg.seed)
        val_imgs, yv = [images[i] for i in va], y_train[va]
        images, y_tr, boxes, scales = ([images[i] for i in tr], y_train[tr],
                                       [boxes[i] for i in tr], scales[tr])
    else:
        val_imgs, _ = load_images(val_paths, cfg.max_side)
        yv, y_tr = np.asarray(y_val, np.int64), y_train

    model = Classifier(load_backbone(cfg.backbone), n_classes, cfg.dropout, cfg.trainable_blocks)
    cached = (cfg.cached_trunk == "yes" or (cfg.cached_trunk == "auto" and device.type == "cpu")) \
        and model.split is not None
    ds = TrainSet(images, y_tr, boxes, scales, cfg)
    if cached:
        model.trunk = FrozenTrunk(model, cfg.image_size)  # type: ignore[assignment]
        epoch_batches = _cached_batches(model.trunk, ds, cfg, n_classes)
        val_acts = torch.from_numpy(_eval_activations(model.trunk, val_imgs, cfg))
    else:
        model = model.to(device)
        inv = _class_weights(y_tr, n_classes)
        sampler = (WeightedRandomSampler(torch.as_tensor(inv[y_tr]), num_samples=len(y_tr),
                                         generator=torch.Generator().manual_seed(cfg.seed))
                   if cfg.balance == "sampler" else None)
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler,
                            shuffle=sampler is None, drop_last=len(y_tr) > cfg.batch_size,
                            num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                            generator=torch.Generator().manual_seed(cfg.seed))
        epoch_batches = lambda: iter(loader)  # noqa: E731
    loss_w = (torch.tensor(_class_weights(y_tr, n_classes), dtype=torch.float32, device=device)
              if cfg.balance == "weights" else None)
    crit = nn.CrossEntropyLoss(weight=loss_w, label_smoothing=cfg.label_smoothing)
    bb_params = [p for p in model.backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": list(model.fc.parameters()), "lr": cfg.lr},
                             {"params": bb_params, "lr": cfg.backbone_lr}],
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1,
                                                       patience=cfg.plateau_patience)
    curve: list[dict] = []
    best, best_key, since_best = None, (-1.0, -np.inf), 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        model.train()
        total, n = 0.0, 0
        for x, yb in epoch_batches():
            x, yb = x.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with _autocast(device):
                logits = model.forward_top(x) if cached else model(x)
                loss = crit(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(yb)
            n += len(yb)
        model.eval()
        pv = (np.mean([_proba_from(model, val_acts[:, v], True).numpy()
                       for v in range(val_acts.shape[1])], axis=0)
              if cached else predict_proba(model, val_imgs, cfg, device))
        val_loss = float(-np.log(np.clip(pv[np.arange(len(yv)), yv], 1e-7, 1)).mean())
        pred = pv.argmax(1)
        row = {"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss,
               "val_acc": float((pred == yv).mean()), "val_balanced_acc": balanced_accuracy(yv, pred, n_classes),
               "lr": opt.param_groups[-1]["lr"], "seconds": round(time.time() - t0, 2)}
        curve.append(row)
        print(f"  epoch {epoch}: " + " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                              if k != "epoch"), file=sys.stderr)
        sched.step(val_loss)
        key = (row["val_balanced_acc"], -val_loss)
        if key > best_key:
            best, best_key, since_best = copy.deepcopy(model.state_dict()), key, 0
        else:
            since_best += 1
            if since_best >= cfg.early_stop:
                break
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    model.config = asdict(cfg)  # type: ignore[attr-defined]
    return model, curve
