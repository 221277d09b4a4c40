"""Reading, checking and thumbnailing one imported image.

The import keeps the uploaded bytes untouched (they are what the client owns); everything
derived from them — displayed size, thumbnail, model input — goes through ml.preprocess.load_rgb,
so the thumbnail a reviewer sees is the picture the model embeds (EXIF orientation applied,
first frame of animations, CMYK / 16-bit / palette converted, transparency on white).
"""
from __future__ import annotations

import hashlib
import io
import re
import tempfile
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError

from ml.phash import phash
from ml.preprocess import load_rgb

# Formats we store and can show in every browser (or convert for the thumbnail: TIFF, BMP).
# MPO is what Pillow calls multi-picture JPEGs from phones and 3D cameras.
EXTENSION_OF = {
    "JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
}
# What Chrome, Firefox and Safari all show in an <img>; the others (TIFF) are shown as a JPEG
# rendition made on first view (display_jpeg, views_media.asset_image). MPO files are JPEGs.
BROWSER_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP"})
ORIENTED_BY_BROWSERS = frozenset({"JPEG", "MPO"})  # EXIF orientation applied by every browser
DISPLAY_SIZE = 2048  # longest side of that rendition: sharp on a review screen, quick to send
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
# The model centre-crops a square, so a strip thinner than this carries nothing to tag and its
# thumbnail would be a line of pixels (and a 30000x1 header is a cheap way to stall a decoder).
MAX_ASPECT_RATIO = 50
# EXIF orientations 5-8 rotate by 90 degrees: the displayed width is the stored height.
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_CHUNK = 1024 * 1024


class ImageError(ValueError):
    """The file is not an image we accept; the message says why, in words for the report."""


@dataclass
class Spooled:
    """A copy of one input file: hashed while read, in memory when small, on disk when big."""

    file: BinaryIO
    sha256: str
    byte_size: int


@dataclass
class Decoded:
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    format: str
    extension: str
    thumbnail: bytes  # JPEG, RGB, longest side <= TAGLOOP_THUMB_SIZE
    phash: int  # ml.phash of the thumbnail (near-duplicate detection)


def size_text(n: int) -> str:
    """2 MiB, 512 KiB, 300 bytes: a limit as a person reads it, never rounded down to 0."""
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:,.0f} {unit}" if value >= 10 or value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def max_file_bytes() -> int:
    return int(getattr(settings, "TAGLOOP_IMPORT_MAX_FILE_BYTES", 256 * 1024 * 1024))


def max_upload_bytes() -> int:
    """One browser or API upload request, all its files together."""
    return int(getattr(settings, "TAGLOOP_MAX_UPLOAD_BYTES", 2 * 1024**3))


def max_upload_files() -> int:
    return int(getattr(settings, "TAGLOOP_MAX_UPLOAD_FILES", settings.DATA_UPLOAD_MAX_NUMBER_FILES))


def declared_length(meta: dict) -> int:
    """A request's Content-Length, read before its body: 0 when absent. Raises ValueError for
    one that is not a whole number (the caller names the header)."""
    value = int(meta.get("CONTENT_LENGTH") or 0)
    if value < 0:
        raise ValueError(value)
    return value


def spool(src: BinaryIO, limit: int | None = None) -> Spooled:
    """Copy ``src`` in chunks (never the whole file in memory) while hashing it.

    Raises ImageError for empty files and files over ``limit`` bytes (read stops there).
    """
    limit = max_file_bytes() if limit is None else limit
    digest = hashlib.sha256()
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
    size = 0
    try:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ImageError(f"file too large (over {limit // (1024 * 1024)} MiB)")
            digest.update(chunk)
            out.write(chunk)
        if size == 0:
            raise ImageError("empty file (0 bytes)")
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return Spooled(out, digest.hexdigest(), size)


def _open_header(fp: BinaryIO) -> Image.Image:
    """Image.open reads the header only: size and format are known before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice that; check_size() below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised file format)") from None
    except Image.DecompressionBombError as exc:  # Pillow's own guard, far above ours: say it as check_size does
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels[1]):,} pixels" if pixels else "too many pixels"
        raise ImageError(f"image too large: {size}, over the limit of {int(settings.TAGLOOP_MAX_IMAGE_PIXELS):,} "
                         "(TAGLOOP_MAX_IMAGE_PIXELS); not decoded") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"unreadable image header ({exc})") from None


def check_size(width: int, height: int) -> None:
    limit = int(settings.TAGLOOP_MAX_IMAGE_PIXELS)
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > limit:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            "(TAGLOOP_MAX_IMAGE_PIXELS); not decoded"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(f"extreme aspect ratio {width}x{height} (more than {MAX_ASPECT_RATIO}:1); not decoded")


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))  # ExifTags.Base.Orientation
    except Exception:  # noqa: BLE001 - broken EXIF is common; load_rgb ignores it the same way
        return 1


def has_orientation(fp: BinaryIO) -> bool:
    """Whether the image carries an EXIF orientation other than "as stored". Browsers apply it
    to JPEGs, but not all of them to other formats (Chromium ignores it in WebP): those are
    shown as a rendition, so the large view is turned like the thumbnail and what the model saw."""
    fp.seek(0)
    try:
        with _open_header(fp) as header:
            return _orientation(header) != 1
    except (ImageError, OSError, ValueError, SyntaxError, EOFError):
        return False


def decode(fp: BinaryIO, thumb_size: int | None = None) -> Decoded:
    """Check and decode the image in ``fp`` (rewound first); return its facts and a thumbnail.

    Every refusal is an ImageError whose message fits in an import report.
    """
    thumb_size = int(thumb_size or settings.TAGLOOP_THUMB_SIZE)
    fp.seek(0)
    with _open_header(fp) as header:
        fmt = header.format or ""
        if fmt not in EXTENSION_OF:
            raise ImageError(f"unsupported image format {fmt or 'unknown'}")
        width, height = header.size
        check_size(width, height)
        if fmt == "JPEG" and _orientation(header) in _SWAPPED_ORIENTATIONS:
            width, height = height, width  # JPEG headers give the stored size; see below for others
    fp.seek(0)
    try:
        # draft_size: JPEGs decode at a reduced DCT scale that still covers the thumbnail; the
        # whole entropy-coded stream is read, so truncation is still caught.
        img = load_rgb(fp, draft_size=thumb_size)
    except ValueError as exc:
        cause = exc.__cause__ or exc
        raise ImageError(f"corrupt or truncated image data ({cause})") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image data ({exc})") from None
    with img:
        if fmt != "JPEG":
            # Only JPEGs are drafted to a smaller scale (load_rgb, draft_size): for every other
            # format the loaded, transposed image has the displayed size. The header can't be
            # trusted for that: Pillow's TIFF plugin already reports orientations 5-8 rotated.
            width, height = img.size
        thumb = ImageOps.contain(img, (thumb_size, thumb_size), Image.Resampling.LANCZOS) \
            if max(img.size) > thumb_size else img
        buf = io.BytesIO()
        thumb.save(buf, "JPEG", quality=85, optimize=True)
        fingerprint = phash(thumb)
    return Decoded(width, height, fmt, EXTENSION_OF[fmt], buf.getvalue(), fingerprint)


def display_jpeg(fp: BinaryIO, size: int = DISPLAY_SIZE) -> bytes:
    """The image as a browser-displayable JPEG (longest side <= size), decoded like the thumbnail
    (orientation applied, first page, CMYK / 16-bit converted). Raises ImageError."""
    try:
        img = load_rgb(fp)
    except (ValueError, OSError, SyntaxError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image data ({exc})") from None
    with img:
        shown = ImageOps.contain(img, (size, size), Image.Resampling.LANCZOS) if max(img.size) > size else img
        buf = io.BytesIO()
        shown.save(buf, "JPEG", quality=90)
    return buf.getvalue()
