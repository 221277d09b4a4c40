"""Image decoding and model-input preparation.

Contract (docs/ml-contract.md):
- ``load_rgb(src) -> PIL.Image`` in mode RGB, EXIF-transposed, first frame of animations,
  alpha composited on white.
- ``to_input(img, size=224) -> float32 (3, size, size)``: shorter side to 256/224*size (bicubic),
  center crop, ``(x - 127) / 128`` (the EfficientNet-Lite normalisation).

Undecodable input raises ``ValueError`` with a message that names the problem, so callers
(``Embedder.embed_paths``, import jobs) can store it per file and carry on.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 224
RESIZE = 256

# Decompression-bomb guard. Pillow's default (~89 MP) only *warns* and errors at 2x that;
# we want one explicit limit that yields a clear ValueError instead of a warning that nobody
# reads. 100 MP still admits 12k x 8k camera/scanner files. Override with TAGLOOP_MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = int(os.environ.get("TAGLOOP_MAX_IMAGE_PIXELS", 100_000_000))
# Pillow raises DecompressionBombError itself above 2 * MAX_IMAGE_PIXELS (before allocating
# anything); between 1x and 2x it would only warn, so load_rgb checks the header size itself.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_WHITE = (255, 255, 255)
_JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG draft decodes at 1/2, 1/4 or 1/8 scale via the DCT, which aliases a little on fine texture.
# Keeping >= 2x the resize target lets the antialiased bicubic do the last step: measured on
# 3x-upscaled FlickrLogos photos, cosine to full decode went from >= 0.9915 (1x) to >= 0.999.
DRAFT_FACTOR = 2


def _first_frame(img: Image.Image) -> None:
    """Seek animated GIF/WebP/APNG/TIFF to frame 0 (a tag describes what a thumbnail shows)."""
    if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
        img.seek(0)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        # Palette images may carry transparency in info["transparency"]; going through RGBA
        # keeps it instead of silently turning transparent pixels black.
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale (scanners, medical, PNG-16): Pillow's convert("L") clips
        # instead of scaling, which turns most 16-bit images white. Scale by the type's range.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # 65535 -> 255
        elif mode == "I":
            hi = float(arr.max()) if arr.size else 0.0
            # "I" is what Pillow gives 16-bit PNGs too; values > 255 mean a 16-bit range.
            arr = arr / 257.0 if hi > 255 else arr
        else:  # "F": assume [0, 1] floats when they look like it
            hi = float(arr.max()) if arr.size else 0.0
            arr = arr * 255.0 if hi <= 1.0 else arr
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, _WHITE)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    # CMYK (Pillow inverts Adobe CMYK JPEGs itself), YCbCr, LAB, HSV, L, 1, I;16 variants...
    return img.convert("RGB")


def load_rgb(src: str | Path | BinaryIO, *, draft_size: int | None = None) -> Image.Image:
    return _load(src, draft_size)[0]


def _load(src: str | Path | BinaryIO, draft_size: int | None) -> tuple[Image.Image, tuple[float, float]]:
    """Decode ``src`` (path or binary file object) into an RGB ``PIL.Image``.

    ``draft_size``: when given and the file is a JPEG, let libjpeg decode at a reduced DCT scale
    whose result still has both sides >= ``draft_size``. That is 2-8x faster for large photos
    and the later bicubic resize cannot tell the difference at model resolution.

    Raises ``ValueError`` for empty, non-image, truncated or oversize (decompression bomb) input;
    ``FileNotFoundError`` stays as is.
    """
    name = str(src) if isinstance(src, (str, Path)) else getattr(src, "name", "<stream>")
    if isinstance(src, (str, Path)) and os.path.isfile(src) and os.path.getsize(src) == 0:
        raise ValueError(f"empty file (0 bytes): {name}")
    try:
        img = Image.open(src)
    except UnidentifiedImageError as exc:
        raise ValueError(f"not a recognised image format: {name}") from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (OSError, SyntaxError, EOFError, struct.error) as exc:  # header cut short or mangled
        raise ValueError(f"corrupt or truncated image header ({exc}): {name}") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image too large (decompression bomb guard, > {MAX_IMAGE_PIXELS} px): {name}") from exc
    opened = img
    # Closing a multi-frame image closes its file too: only do that to a file we opened here,
    # never to the caller's file object (the import reads it again for the thumbnail).
    owns_file = isinstance(src, (str, Path))
    try:
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"image too large: {w}x{h} = {w * h} px > {MAX_IMAGE_PIXELS} (decompression bomb guard): {name}"
            )
        if w <= 0 or h <= 0:
            raise ValueError(f"image has zero size {w}x{h}: {name}")
        _first_frame(img)
        extent: tuple[float, float] = (float(w), float(h))
        if draft_size and img.format == "JPEG":
            # draft() keeps both sides >= the request, so the shorter side stays >= draft_size.
            # Scaled sizes round up (1125/4 -> 282 rows, the last one partial); the returned box
            # is the exact extent of the original in scaled pixels, which keeps crops aligned.
            res = img.draft("RGB", (draft_size, draft_size))
            if res is not None:
                extent = (float(res[1][2]), float(res[1][3]))
        try:
            img.load()
        except OSError as exc:  # Pillow reports truncation / corrupt data as OSError
            raise ValueError(f"corrupt or truncated image data ({exc}): {name}") from exc
        except (SyntaxError, EOFError, IndexError, struct.error) as exc:
            raise ValueError(f"corrupt image data ({type(exc).__name__}: {exc}): {name}") from exc
        try:
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):
                extent = (extent[1], extent[0])
            # exif_transpose reads orientation from EXIF (JPEG/WebP/TIFF/PNG eXIf). It copies the
            # whole image even when there is nothing to do, so only call it when needed.
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img) or img
        except Exception:  # noqa: BLE001 - broken EXIF is common in the wild: keep pixels as stored
            pass
        out = to_rgb(img)
        if out is not opened and owns_file:
            opened.close()  # animated files keep their handle open until closed
        return out, extent
    except ValueError:
        if owns_file:
            opened.close()
        raise


def _crop_box(w: float, h: float, size: int) -> tuple[float, float, float, float]:
    """Source-pixel box that 'resize shorter side to 256/224*size, center crop size' keeps.

    Snapped to whole source pixels: a fractional box is as valid a centre crop, but the GPU path
    (tensor slicing + resize) can only cut whole pixels, and on detailed photos a 0.4 px shift
    alone moves embeddings by ~1% cosine. Same integer box everywhere = same vectors everywhere.
    """
    side = max(1, int(round(min(w, h) * IMAGE_SIZE / RESIZE)))
    left = int(round((w - side) / 2.0))
    top = int(round((h - side) / 2.0))
    return (float(left), float(top), float(left + side), float(top + side))


def resize_crop(img: Image.Image, size: int = IMAGE_SIZE, extent: tuple[float, float] | None = None) -> Image.Image:
    """Bicubic resize + center crop in one Pillow call.

    Resampling only the crop box straight to (size, size) is equivalent to resizing the whole
    image and then cropping (Pillow's box resize uses pixels outside the box as filter support)
    but does a fraction of the work. ``reducing_gap`` lets Pillow pre-shrink huge images by an
    integer factor first (quality-neutral at 2x+ above target).
    """
    ew, eh = extent or (img.width, img.height)
    box = _crop_box(ew, eh, size)  # type: ignore[arg-type]
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def normalize(rgb_u8: np.ndarray) -> np.ndarray:
    """uint8 HWC (or NHWC) -> float32 CHW (NCHW) with (x - 127) / 128."""
    x = rgb_u8.astype(np.float32)
    x -= 127.0
    x *= 1.0 / 128.0
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def _resize_crop_torch(rgb: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray | None:
    """uint8 HWC crop + antialiased bicubic resize with torch's uint8 kernel (same filter as
    Pillow, a = -0.5; measured 0.2 ms vs Pillow's 0.7-1.2 ms per image on this CPU, and it
    releases the GIL). Returns None when torch is unavailable."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:  # pragma: no cover - torch is a hard dependency of ml/, but stay usable
        return None
    l, t, r, b = (int(v) for v in box)
    x = torch.from_numpy(rgb)[t:b, l:r].permute(2, 0, 1).unsqueeze(0)  # NCHW view, channels_last
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).contiguous().numpy()


def to_uint8(img: Image.Image, size: int = IMAGE_SIZE, extent: tuple[float, float] | None = None) -> np.ndarray:
    """RGB image -> uint8 (size, size, 3) after resize + center crop (what workers ship around:
    4x smaller than float32, normalisation happens once per batch)."""
    if img.mode != "RGB":
        img = to_rgb(img)
    ew, eh = extent or (img.width, img.height)
    # np.array (writable copy, ~0.05 ms): torch warns on wrapping Pillow's read-only buffer
    out = _resize_crop_torch(np.array(img), _crop_box(ew, eh, size), size)
    return out if out is not None else np.asarray(resize_crop(img, size, extent), dtype=np.uint8)


def to_input(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB image -> float32 (3, size, size): shorter side to 256/224*size bicubic, center crop,
    ``(x - 127) / 128``."""
    return normalize(to_uint8(img, size))


def load_input(src: str | Path | BinaryIO, size: int = IMAGE_SIZE) -> np.ndarray:
    """Path -> uint8 (size, size, 3) with draft-mode JPEG decode (the fast path for bulk embedding)."""
    resize = int(round(RESIZE * size / IMAGE_SIZE))
    img, extent = _load(src, DRAFT_FACTOR * resize)
    try:
        return to_uint8(img, size, extent)
    finally:
        img.close()


# ---- tensor versions for the CUDA path (torch imported lazily: ml.preprocess stays light) ----

def apply_orientation(x: Any, orientation: int) -> Any:
    """EXIF orientation on a CHW tensor, matching PIL.ImageOps.exif_transpose."""
    if orientation == 2:
        return x.flip(2)
    if orientation == 3:
        return x.flip(1, 2)
    if orientation == 4:
        return x.flip(1)
    if orientation == 5:
        return x.transpose(1, 2)
    if orientation == 6:
        return x.rot90(-1, (1, 2))
    if orientation == 7:
        return x.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return x.rot90(1, (1, 2))
    return x


def gpu_resize_crop(images: list[Any], size: int) -> Any:
    """uint8 CHW tensors of any size -> float (N,3,size,size): crop the source box that 'shorter
    side to 256/224*size, center crop' keeps, then one antialiased bicubic resize. Images of the
    same shape are resized in one call (product catalogues are often uniform)."""
    import torch
    import torch.nn.functional as F

    out = torch.empty((len(images), 3, size, size), device=images[0].device, dtype=torch.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(i)
    for (h, w), idx in groups.items():
        l, t, r, b = _crop_box(w, h, size)
        l, t = int(round(l)), int(round(t))
        side = max(1, min(int(round(r - l)), w - l, h - t))
        crop = torch.stack([images[i][:, t:t + side, l:l + side] for i in idx]).float()
        if side != size:
            crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        # Round like Pillow's uint8 output: measured, unrounded floats alone cost up to 0.5%
        # cosine on small upscaled logos; rounded, GPU and CPU paths agree to >= 0.998.
        out[idx] = crop.clamp_(0, 255).round_()
    return out


def read_jpeg_for_gpu(path: str | Path) -> tuple[bytes, int] | str | None:
    """Reader-thread task: (jpeg bytes, EXIF orientation) for baseline RGB/grey JPEGs that nvJPEG
    can take; None for anything else (PIL fallback); an error message for unreadable files."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc}): {path}"
    if not data:
        return f"empty file (0 bytes): {path}"
    if not data.startswith(_JPEG_MAGIC):
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: mode, size, EXIF
            if im.mode not in ("RGB", "L") or im.width * im.height > MAX_IMAGE_PIXELS:
                return None  # CMYK/YCCK or bomb: the PIL path handles (or rejects) it cleanly
            orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - broken header: let the PIL path produce the error message
        return None
    return data, orientation
