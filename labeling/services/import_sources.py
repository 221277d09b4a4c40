"""What an import reads: the files of a folder tree, a ZIP, or a browser upload being staged.

A ZIP is never extracted: its members are listed from the central directory, checked (unsafe
names, links, ZIP bombs), then streamed one at a time by the importer. Uploads are written
under staging_dir(job) with names we sanitise, so a browser can't place a file elsewhere either.
"""
from __future__ import annotations

import os
import shutil
import stat
import uuid
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Protocol

from django.conf import settings

from ..models import ImportJob
from . import images

UPLOAD = "upload"  # ImportJob.source of browser uploads; the files wait in staging_dir(job)
# ZIP bomb guards, checked on the central directory before a byte is inflated: the sum of the
# declared sizes, and members that inflate suspiciously well (real photos barely compress).
MAX_ZIP_RATIO = 200
RATIO_CHECK_ABOVE = 1024 * 1024


class SourceError(Exception):
    """The source as a whole can't be read (missing, not a folder or ZIP, ZIP bomb)."""


def max_import_bytes() -> int:
    return int(getattr(settings, "TAGLOOP_IMPORT_MAX_BYTES", 20 * 1024**3))


# --- what a source contains -------------------------------------------------------------

@dataclass
class Entry:
    name: str  # relative to the source; stored as Asset.original_name
    folder: str | None  # the name of the folder it sits in, for labels; None at the root
    open: Callable[[], BinaryIO] | None = None
    refusal: str = ""  # set: not read, reported as kind (see report())
    kind: str = ""


_LITTER = frozenset({"__macosx", "thumbs.db", "desktop.ini"})


def _hidden(part: str) -> bool:
    # Finder / Windows leftovers nobody meant to import: .DS_Store, ._x.jpg, __MACOSX/, Thumbs.db.
    # '..' is not hidden: it is an unsafe ZIP name and gets reported.
    return (part.startswith(".") and part not in (".", "..")) or part.lower() in _LITTER


def _folder_of(parts: tuple[str, ...], outer: str | None = None) -> str | None:
    return parts[-2] if len(parts) > 1 else outer


def _classify(parts: tuple[str, ...], name: str, folder: str | None) -> Entry | None:
    """Entry for a file name, refused when its extension says it isn't an image; None if hidden."""
    if any(_hidden(p) for p in parts):
        return None
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix not in images.IMAGE_SUFFIXES:
        what = f"'{suffix}' files" if suffix else "files without an extension"
        return Entry(name, folder, refusal=f"not an image type ({what} are not imported)", kind="skipped")
    return Entry(name, folder)


def _zip_member_problem(info: zipfile.ZipInfo, parts: tuple[str, ...]) -> str:
    raw = info.filename
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":") or ".." in parts or "" in parts:
        return "unsafe path in ZIP (absolute or containing '..'); entry not extracted"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link in ZIP; entry not extracted"
    if info.flag_bits & 0x1:
        return "encrypted ZIP entry; can't be read"
    if info.file_size > images.max_file_bytes():
        return f"file too large ({info.file_size:,} bytes uncompressed)"
    if info.file_size > RATIO_CHECK_ABOVE and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        return f"suspicious compression ratio ({info.file_size:,} bytes from {info.compress_size:,}; ZIP bomb guard)"
    return ""


def _zip_entries(path: Path, stack: ExitStack, prefix: str = "", outer: str | None = None) -> list[Entry]:
    """Members of one ZIP, streamed on demand. Nested archives are reported, not opened."""
    try:
        zf = stack.enter_context(zipfile.ZipFile(path))
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"not a readable ZIP archive ({exc})") from None
    members = [i for i in zf.infolist() if not i.is_dir()]
    declared = sum(i.file_size for i in members)
    if declared > max_import_bytes():
        raise SourceError(
            f"ZIP would inflate to {declared:,} bytes, over the import limit of {max_import_bytes():,} (ZIP bomb guard)"
        )
    entries = []
    for info in members:
        shown = info.filename.replace("\\", "/")
        parts = tuple(shown.split("/"))
        name = prefix + shown.lstrip("/")
        problem = _zip_member_problem(info, parts)
        if problem:  # checked before hidden names: '../.x' is an attack, not Finder litter
            entries.append(Entry(prefix + shown, None, refusal=problem, kind="failed"))
            continue
        if any(_hidden(p) for p in parts):
            continue
        if parts[-1].lower().endswith(".zip"):
            entries.append(Entry(name, None, refusal="ZIP inside a ZIP is not opened; import it on its own",
                                 kind="skipped"))
            continue
        entry = _classify(parts, name, _folder_of(parts, outer))
        if entry and not entry.refusal:
            entry.open = lambda info=info: zf.open(info)
        if entry:
            entries.append(entry)
    return entries


def _folder_entries(root: Path, stack: ExitStack) -> list[Entry]:
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            parts = path.relative_to(root).parts
            name = "/".join(parts)
            if _hidden(fname):
                continue
            if fname.lower().endswith(".zip"):
                try:
                    entries.extend(_zip_entries(path, stack, prefix=name + "/", outer=_folder_of(parts)))
                except SourceError as exc:
                    entries.append(Entry(name, None, refusal=str(exc), kind="failed"))
                continue
            entry = _classify(parts, name, _folder_of(parts))
            if entry and not entry.refusal:
                entry.open = lambda path=path: open(path, "rb")
            if entry:
                entries.append(entry)
    return entries


def scan(source: Path, stack: ExitStack) -> list[Entry]:
    """Every file the source holds, in a stable order; ZIPs stay open in ``stack``."""
    if source.is_dir():
        return _folder_entries(source, stack)
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise SourceError(f"{source} is neither a folder nor a ZIP archive")
        return _zip_entries(source, stack)
    raise SourceError(f"source not found: {source}")


# --- browser uploads ----------------------------------------------------------------------

class Uploaded(Protocol):
    """What Django's UploadedFile offers and staging needs."""

    name: str | None

    def chunks(self) -> Iterable[bytes]: ...


def uploads_root() -> Path:
    return Path(settings.VAR_DIR) / "uploads"


def staging_dir(job: ImportJob) -> Path:
    return uploads_root() / str(job.pk)


def safe_relative(path: str) -> PurePosixPath:
    """A browser-sent relative path reduced to plain folder and file names ('..', drive letters,
    absolute parts dropped). webkitRelativePath starts with the folder the user picked: that
    folder is the import's root, like the folder given to the management command."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..") and ":" not in p]
    parts = parts[1:] if len(parts) > 1 else parts
    return PurePosixPath(*parts) if parts else PurePosixPath("unnamed")


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix, n = target.stem, target.suffix, 1
    while target.exists():  # same name picked twice (e.g. from two folders' roots)
        n += 1
        target = folder / f"{stem} ({n}){suffix}"
    return target


def stage_files(files: Iterable[tuple[Uploaded, str]]) -> Path:
    """Write uploaded files (with their relative paths) chunk by chunk into a fresh folder."""
    folder = uploads_root() / f"incoming-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        for upload, relative in files:
            rel = safe_relative(relative or os.path.basename(upload.name or ""))
            parent = folder.joinpath(*rel.parent.parts)
            parent.mkdir(parents=True, exist_ok=True)
            with open(_free_name(parent, rel.name), "wb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
