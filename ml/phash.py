"""Perceptual hash (DCT pHash): a 64-bit fingerprint that survives re-encoding and resizing.

CNN embeddings are built to be *semantic*: a 240 px product photo shrunk to 180 px and saved at
JPEG quality 70 can drop to cosine 0.65-0.81 with its original, below any threshold that keeps
different photos of the same logo apart (they reach 0.958). The low DCT frequencies of a 32 x 32
grey thumbnail barely move under those edits (Hamming distance p95 = 2 bits of 64, measured on
150 shoe/FlickrLogos photos), so near-duplicate detection uses both (labeling.services.duplicates).
pHash is not crop-robust (a 90 % centre crop moves it ~10 bits); the embedding covers that.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# The near-duplicate rule (labeling.services.duplicates, bench/duplicates.py): the same picture
# when the embeddings alone say so, or when they are close and the hashes nearly equal.
NEAR_DUP_COSINE = 0.965
PHASH_MIN_COSINE = 0.75
PHASH_MAX_BITS = 4

SIZE = 32  # grey thumbnail side the DCT runs on
LOW = 8  # the LOW x LOW lowest frequencies make the 64 bits


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(SIZE)
_WEIGHTS = (np.uint64(1) << np.arange(LOW * LOW, dtype=np.uint64))


def phash(img: Image.Image) -> int:
    """64-bit pHash as a *signed* int64 (fits a database BigIntegerField)."""
    grey = np.asarray(img.convert("L").resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float64)
    coeffs = (_DCT @ grey @ _DCT.T)[:LOW, :LOW].ravel()
    bits = coeffs > np.median(coeffs[1:])  # the DC term would dominate the median
    unsigned = int((bits.astype(np.uint64) * _WEIGHTS).sum(dtype=np.uint64))
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


def hamming(a: int, b: int) -> int:
    """Differing bits of two hashes (signed or unsigned 64-bit ints)."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


def is_near_duplicate(cosine: float, bits: int | None) -> bool:
    """The rule on one pair: embedding cosine, and Hamming distance of the hashes (None when a
    hash is missing)."""
    return cosine >= NEAR_DUP_COSINE or (
        cosine >= PHASH_MIN_COSINE and bits is not None and bits <= PHASH_MAX_BITS)
