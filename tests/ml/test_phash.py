"""ml.phash on real photos: re-encoded / resized copies stay within a few bits, others do not."""
from __future__ import annotations

import io

from PIL import Image

from ml.phash import hamming, phash
from tests.ml._embeddings import datasets_dir


def _jpeg(img: Image.Image, scale: float, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_recompressed_and_shrunk_copies_keep_their_hash_and_other_photos_do_not():
    paths = sorted((datasets_dir() / "flickrlogos27" / "images").glob("*.jpg"))[:40]
    hashes = [phash(Image.open(p)) for p in paths]
    copies = []
    for p, h in zip(paths[:20], hashes):
        img = Image.open(p).convert("RGB")
        copies.append(hamming(h, phash(_jpeg(img, 0.75, 70))))
        assert hamming(h, phash(img)) == 0  # deterministic, mode-independent
    # within labeling.services.duplicates.PHASH_MAX_BITS (4) for nearly all; the misses are
    # tiny images (a 70 x 61 logo shrunk to 52 x 45 moves 8 bits)
    assert sum(d <= 4 for d in copies) >= 18 and max(copies) <= 10, copies
    # different photos: far apart (64 random bits differ by 32 on average)
    dists = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert sum(d <= 4 for d in dists) <= len(dists) // 200
    assert sorted(dists)[len(dists) // 2] >= 24


def test_hashes_are_signed_64_bit_and_hamming_ignores_the_sign():
    h = phash(Image.new("RGB", (64, 64), "white").transpose(Image.Transpose.ROTATE_90))
    assert -(1 << 63) <= h < (1 << 63)
    assert hamming(-1, 0) == 64 and hamming(-1, -1) == 0 and hamming(1, 3) == 1


def test_the_near_duplicate_rule_needs_close_embeddings_and_for_most_pairs_close_hashes():
    from ml.phash import is_near_duplicate

    assert is_near_duplicate(0.97, None)  # embeddings alone are enough above the high bar
    assert is_near_duplicate(0.80, 3) and not is_near_duplicate(0.80, 5)
    assert not is_near_duplicate(0.80, None)  # no hash, no second signal
    assert not is_near_duplicate(0.70, 0)  # equal hashes of unrelated-looking images: no
