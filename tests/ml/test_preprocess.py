"""ml.preprocess: every odd image mode a client library contains decodes to RGB of the right size,
and broken files fail with a ValueError that says what is wrong."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ml import preprocess
from ml.preprocess import IMAGE_SIZE, load_input, load_rgb, resize_crop, to_input

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("TAGLOOP_DATASETS", REPO.parent / "shared" / "datasets"))


def _gradient(w: int, h: int) -> Image.Image:
    """Non-symmetric RGB test card: red grows left->right, green top->bottom."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 64)], -1).astype(np.uint8), "RGB")


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (40, 30)
    r, g, b = img.getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16bit_grey_scaled_not_clipped(tmp_path: Path, mode: str) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16)[None, :].repeat(16, 0)
    p = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(p)  # uint16 -> "I;16"; Pillow reads 16-bit PNG back as "I" or "I;16"
    src: Image.Image | Path = Image.fromarray(ramp.astype(np.int32)) if mode == "I" else p
    if isinstance(src, Image.Image):
        buf = io.BytesIO()
        src.save(buf, format="TIFF")
        buf.seek(0)
        src = buf  # type: ignore[assignment]
    img = load_rgb(src)
    assert img.mode == "RGB" and img.size == (64, 16)
    a = np.asarray(img)
    # a naive convert("L") clips everything above 255 to white; we want a real ramp
    assert a[0, 0, 0] < 10 and a[0, -1, 0] > 245 and 100 < a[0, 32, 0] < 160


def test_palette_with_transparency_on_white(tmp_path: Path) -> None:
    p = tmp_path / "pal.png"
    im = Image.new("P", (20, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (10, 0, 20, 10))  # right half red, left half index 0 = transparent
    im.info["transparency"] = 0
    im.save(p, transparency=0)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (20, 10)
    assert img.getpixel((2, 5)) == (255, 255, 255)  # transparent -> white, not black
    assert img.getpixel((15, 5)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white(tmp_path: Path, mode: str) -> None:
    p = tmp_path / f"{mode}.png"
    im = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    im.paste((0, 0, 0, 255), (0, 0, 15, 20))
    im.convert(mode).save(p)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert img.getpixel((25, 10)) == (255, 255, 255)
    assert img.getpixel((5, 10)) == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(tmp_path: Path, fmt: str) -> None:
    if fmt == "WEBP" and not preprocess.Image.registered_extensions().get(".webp"):
        pytest.skip("Pillow built without WebP")
    p = tmp_path / f"anim.{fmt.lower()}"
    frames = [Image.new("RGB", (32, 24), c) for c in ((0, 0, 255), (255, 0, 0), (0, 255, 0))]
    frames[0].save(p, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, lossless=True)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (32, 24)
    r, g, b = img.getpixel((16, 12))
    assert b > 200 and r < 50 and g < 50  # first (blue) frame


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    src = _gradient(48, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"  # PNG (eXIf chunk): lossless, so pixels compare exactly
    src.save(p, exif=exif)
    img = load_rgb(p)
    transposed = orientation in (5, 6, 7, 8)
    assert img.mode == "RGB" and img.size == ((32, 48) if transposed else (48, 32))
    want = src.copy()
    want.getexif()[0x0112] = orientation
    assert np.array_equal(np.asarray(img), np.asarray(ImageOps.exif_transpose(want)))


def test_exif_rotated_jpeg(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held upright: stored landscape, shown portrait
    p = tmp_path / "rot.jpg"
    _gradient(64, 40).save(p, exif=exif, quality=95)
    assert load_rgb(p).size == (40, 64)
    assert load_input(p).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_apply_orientation_tensor_matches_pil(tmp_path: Path) -> None:
    """The CUDA decode path orients tensors itself (nvJPEG ignores EXIF); check it on CPU."""
    torch = pytest.importorskip("torch")
    from ml.preprocess import apply_orientation

    src = _gradient(48, 32)
    chw = torch.from_numpy(np.asarray(src).copy()).permute(2, 0, 1)
    for o in range(1, 9):
        want = src.copy()
        want.getexif()[0x0112] = o
        got = apply_orientation(chw, o).permute(1, 2, 0).numpy()
        assert np.array_equal(got, np.asarray(ImageOps.exif_transpose(want))), o


def test_bad_files_raise_clear_value_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    full = io.BytesIO()
    _gradient(300, 200).save(full, format="JPEG", quality=90)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ValueError, match="empty"):
        load_rgb(empty)
    with pytest.raises(ValueError, match="not a recognised image"):
        load_rgb(text)
    with pytest.raises(ValueError, match="truncated"):
        load_rgb(trunc)
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "missing.jpg")


def test_decompression_bomb_is_value_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(p)
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(ValueError, match="too large"):
        load_rgb(p)
    monkeypatch.setattr(preprocess.Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's own error path
    with pytest.raises(ValueError, match="too large"):
        load_rgb(p)


def test_to_input_shape_range_and_sizes() -> None:
    img = _gradient(500, 300)
    x = to_input(img)
    assert x.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 128 / 128
    assert to_input(img, size=240).shape == (3, 240, 240)
    # 0 -> -127/128, 255 -> 1.0
    assert np.allclose(to_input(Image.new("RGB", (10, 10), (0, 255, 127))).reshape(3, -1)[:, 0],
                       [-127 / 128, 1.0, 0.0])


def test_resize_crop_equals_resize_then_crop() -> None:
    """The one-call box resize must match the contract's 'shorter side 256, center crop 224'."""
    img = _gradient(500, 375)
    ref = img.resize((round(500 * 256 / 375), 256), Image.Resampling.BICUBIC)
    left, top = (ref.width - 224) / 2, (ref.height - 224) / 2
    ref = ref.crop((round(left), round(top), round(left) + 224, round(top) + 224))
    got = resize_crop(img)
    diff = np.abs(np.asarray(got, np.float32) - np.asarray(ref, np.float32))
    assert got.size == (224, 224) and diff.mean() < 1.5


def test_draft_decode_close_to_full_decode(tmp_path: Path) -> None:
    """load_input decodes big JPEGs at reduced DCT scale; the model input must barely change."""
    src = sorted((DATASETS / "flickrlogos27" / "images").glob("*.jpg"))[:3]
    if not src:
        pytest.skip(f"flickrlogos27 not found under {DATASETS} (set TAGLOOP_DATASETS)")
    big = []
    for i, s in enumerate(src):  # camera-size versions of real photos (the set tops out at 500 px)
        with Image.open(s) as im:
            b = tmp_path / f"big{i}.jpg"
            im.convert("RGB").resize((im.width * 3, im.height * 3), Image.Resampling.BICUBIC).save(b, quality=92)
            big.append(b)
    for p in big:
        with Image.open(p) as im:
            im.draft("RGB", (preprocess.DRAFT_FACTOR * 256,) * 2)
            assert min(im.size) < 1000  # draft really reduced the decode
        fast = load_input(p).astype(np.float32)
        full = np.asarray(resize_crop(load_rgb(p)), np.float32)
        assert np.abs(fast - full).mean() < 1.5, p
