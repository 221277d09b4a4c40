"""Near-duplicate detection: the embedding-only rule (baseline) vs embedding + perceptual hash.

    .venv/bin/python bench/duplicates.py [--data ../shared/datasets] [--n 150] [--thumb 320]

Copies of --n real photos (shoes + FlickrLogos, fixed seed) are made three ways -- shrunk to
75 % at JPEG quality 70, to 50 % at quality 60, and a 90 % centre crop at quality 80 -- and each
copy is checked against its original with both rules (``ml.phash.is_near_duplicate`` is what
labeling.services.duplicates applies). Hashes are taken from thumbnails of --thumb px, as the
import does. The price of the hash rule is counted on every distinct dataset file: pairs of
*different files* that it joins beyond the cosine rule. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml.embedding import Embedder  # noqa: E402
from ml.phash import NEAR_DUP_COSINE, PHASH_MAX_BITS, PHASH_MIN_COSINE, hamming, is_near_duplicate, phash  # noqa: E402
from ml.preprocess import load_rgb  # noqa: E402

COPIES = {
    "shrunk 75 %, q70": (0.75, None, 70),
    "shrunk 50 %, q60": (0.5, None, 60),
    "crop 90 %, q80": (1.0, 0.9, 80),
}


def distinct_photos(data: Path) -> list[Path]:
    paths = sorted((data / "shoes").glob("*/*/*.jpg")) + sorted((data / "flickrlogos27" / "images").glob("*.jpg"))
    seen, out = set(), []
    for p in paths:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(p)
    return out


def thumb_hash(img: Image.Image, size: int) -> int:
    return phash(ImageOps.contain(img, (size, size), Image.Resampling.LANCZOS) if max(img.size) > size else img)


def make_copy(img: Image.Image, scale: float, crop: float | None, quality: int) -> Image.Image:
    if crop:
        w, h = img.size
        dx, dy = int(w * (1 - crop) / 2), int(h * (1 - crop) / 2)
        img = img.crop((dx, dy, w - dx, h - dy))
    if scale != 1.0:
        img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--thumb", type=int, default=320)
    a = ap.parse_args()
    paths = distinct_photos(Path(a.data))
    if not paths:
        raise SystemExit(f"no photos under {a.data}")
    emb = Embedder()
    res = emb.embed_paths(paths)
    paths = [paths[i] for i in res.ok]
    X = unit(res.vectors)
    images = [load_rgb(p) for p in paths]
    H = [thumb_hash(im, a.thumb) for im in images]

    rng = np.random.default_rng(0)
    pick = rng.choice(len(paths), min(a.n, len(paths)), replace=False)
    out: dict = {"bench": "duplicates", "n_photos": len(paths), "n_copies_per_kind": len(pick),
                 "rule": {"near_dup_cosine": NEAR_DUP_COSINE, "phash_min_cosine": PHASH_MIN_COSINE,
                          "phash_max_bits": PHASH_MAX_BITS}, "copies": {}}
    print(f"{len(paths)} distinct photos; {len(pick)} copies of each kind")
    print("| copy | cosine only | cosine + hash | ratio | cosine p5 | hash bits p95 |\n|---|---|---|---|---|---|")
    for name, (scale, crop, quality) in COPIES.items():
        copies = [make_copy(images[i], scale, crop, quality) for i in pick]
        cos = (unit(emb.embed_images(copies)) * X[pick]).sum(1)
        bits = np.array([hamming(H[i], thumb_hash(c, a.thumb)) for i, c in zip(pick, copies)])
        base = int((cos >= NEAR_DUP_COSINE).sum())
        rule = int(sum(is_near_duplicate(float(c), int(b)) for c, b in zip(cos, bits)))
        ratio = rule / base if base else float("inf")
        out["copies"][name] = {"cosine_only": base, "with_hash": rule, "ratio": round(ratio, 2),
                               "cosine_p5": round(float(np.percentile(cos, 5)), 3),
                               "bits_p95": float(np.percentile(bits, 95))}
        print(f"| {name} | {base}/{len(pick)} | {rule}/{len(pick)} | {ratio:.1f}x | "
              f"{out['copies'][name]['cosine_p5']} | {out['copies'][name]['bits_p95']:.0f} |")

    # What the hash rule costs: pairs of different files it joins (the cosine rule's are counted too).
    S = X @ X.T
    i, j = np.triu_indices(len(paths), 1)
    s = S[i, j]
    cand = (s >= PHASH_MIN_COSINE) & (s < NEAR_DUP_COSINE)
    extra = [(int(p), int(q)) for p, q in zip(i[cand], j[cand]) if hamming(H[p], H[q]) <= PHASH_MAX_BITS]
    out["pairs_cosine_rule"] = int((s >= NEAR_DUP_COSINE).sum())
    out["pairs_added_by_hash"] = len(extra)
    out["examples_added_by_hash"] = [[str(paths[p].relative_to(a.data)), str(paths[q].relative_to(a.data))]
                                     for p, q in extra[:10]]
    print(f"different files joined: cosine rule {out['pairs_cosine_rule']} pairs, the hash adds "
          f"{len(extra)} (first ones listed in the JSON: inspect them)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
