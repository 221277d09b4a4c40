"""What an import reads: the files of a folder tree, a ZIP, or a browser upload being staged.

A ZIP is never extracted: its members are listed from the central directory, checked (unsafe
names, links, ZIP bombs), then streamed one at a time by the importer. Uploads are written
under staging_dir(job) with names we sanitise, so a browser can't place a file elsewhere either.
"""
from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import time
import unicodedata
import uuid
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Protocol

from django.conf import settings

from ..models import ImportJob, JobState
from . import images

UPLOAD = "upload"  # ImportJob.source of browser uploads; the files wait in staging_dir(job)
# ZIP bomb guards, checked on the central directory before a byte is inflated: the sum of the
# declared sizes, and members that inflate suspiciously well (real photos barely compress).
MAX_ZIP_RATIO = 200
RATIO_CHECK_ABOVE = 1024 * 1024
# What reading one file (a ZIP member above all) may raise when its bytes are damaged.
READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError)
# The ZIP export's manifest (manifest.py). One at the root of a folder or ZIP is offered to the
# import's Manifests, which takes it if it is a tagloop manifest; else it is skipped like any file.
MANIFEST = "labels.csv"


class SourceError(Exception):
    """The source as a whole can't be read (missing, not a folder or ZIP, ZIP bomb)."""


def display_name(name: str) -> str:
    """A name fit for the database, the report and a terminal: valid UTF-8, no lone surrogates.

    os.walk gives undecodable bytes as surrogates (b'Caf\\xe9' -> 'Caf\\udce9'); PostgreSQL's JSON,
    the job page and a UTF-8 stdout all refuse those. The real path stays for open()."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # a surrogate no file system byte decodes to, e.g. from JSON
        raw = name.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


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
    # A root labels.csv (that may be a tagloop manifest): the prefix of the names of the files
    # beside it, which its rows name relative to ('' at the source's root, 'x.zip/' in a ZIP).
    scope: str | None = None


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


def _offer_as_manifest(entry: Entry, parts: tuple[str, ...], prefix: str) -> bool:
    """Mark a labels.csv at the root of a folder or ZIP as a possible manifest (it keeps its
    refusal: reported skipped unless the import finds it is one)."""
    if parts != (MANIFEST,):
        return False
    entry.scope = prefix
    return True


def _zip_member_problem(info: zipfile.ZipInfo, parts: tuple[str, ...]) -> str:
    raw = info.filename
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":") or ".." in parts:
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
    except Exception as exc:  # noqa: BLE001 - damaged central directories raise UnicodeDecodeError,
        # NotImplementedError (unknown version), struct.error...: all mean "this ZIP can't be read".
        raise SourceError(f"not a readable ZIP archive ({type(exc).__name__}: {exc})") from None
    members = [i for i in zf.infolist() if not i.is_dir()]
    declared = sum(i.file_size for i in members)
    if declared > max_import_bytes():
        raise SourceError(
            f"ZIP would inflate to {declared:,} bytes, over the import limit of {max_import_bytes():,} (ZIP bomb guard)"
        )
    entries = []
    for info in members:
        shown = info.filename.replace("\\", "/")
        # 'a/./b.jpg' and 'a//b.jpg' name a/b.jpg (as safe_relative reads them): a '.' segment
        # must not become a folder, hence a tag named '.'. '..' stays, to be refused below.
        parts = tuple(p for p in shown.split("/") if p not in ("", "."))
        name = prefix + "/".join(parts)
        problem = _zip_member_problem(info, parts)
        if problem:  # checked before hidden names: '../.x' is an attack, not Finder litter
            entries.append(Entry(prefix + shown, None, refusal=problem, kind="failed"))
            continue
        if not parts:
            continue
        if any(_hidden(p) for p in parts):
            continue
        if parts[-1].lower().endswith(".zip"):
            entries.append(Entry(name, None, refusal="ZIP inside a ZIP is not opened; import it on its own",
                                 kind="skipped"))
            continue
        entry = _classify(parts, name, _folder_of(parts, outer))
        if entry and (not entry.refusal or _offer_as_manifest(entry, parts, prefix)):
            entry.open = lambda info=info: zf.open(info)
        if entry:
            entries.append(entry)
    if not entries:  # empty, or only Finder litter: say so, or the import reads "0 / 0 files"
        shown = prefix.rstrip("/") or display_name(path.name)
        entries.append(Entry(shown, None, refusal="no images in it", kind="skipped"))
    return entries


def _folder_entries(root: Path, stack: ExitStack) -> list[Entry]:
    entries: list[Entry] = []

    def unreadable(exc: OSError) -> None:  # os.walk skips such a folder without a word otherwise
        where = Path(exc.filename or root)
        shown = display_name("/".join(where.relative_to(root).parts) if where != root else str(root))
        entries.append(Entry(shown + "/", None, refusal=f"folder can't be read ({exc.strerror or exc})",
                             kind="failed"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname  # the real name, undecodable bytes and all, for open()
            parts = tuple(display_name(p) for p in path.relative_to(root).parts)
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
            if entry and (not entry.refusal or _offer_as_manifest(entry, parts, "")):
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
            if source.suffix.lower() == ".zip":
                raise SourceError(f"{display_name(str(source))} is not a readable ZIP archive (truncated or damaged)")
            raise SourceError(f"{display_name(str(source))} is neither a folder nor a ZIP archive")
        return _zip_entries(source, stack)
    raise SourceError(f"source not found: {display_name(str(source))}")


# --- browser uploads ----------------------------------------------------------------------

class Uploaded(Protocol):
    """What Django's UploadedFile offers and staging needs."""

    name: str | None

    def chunks(self) -> Iterable[bytes]: ...


def uploads_root() -> Path:
    return Path(settings.VAR_DIR) / "uploads"


def staging_dir(job: ImportJob) -> Path:
    return uploads_root() / str(job.pk)


STALE_STAGING_SECONDS = 24 * 3600  # no upload request or queued job waits that long


def clean_stale_staging() -> list[Path]:
    """Remove staging folders nothing will read again, and return them: those of jobs that are
    no longer queued or running (a job the sweep failed keeps its files, up to 2 GiB, otherwise),
    and, a day old, incoming-* folders of requests killed mid-upload or folders of no job.
    Called before each upload is staged, so the disk is reclaimed without a separate task."""
    root = uploads_root()
    if not root.is_dir():
        return []
    cutoff = time.time() - STALE_STAGING_SECONDS
    folders = [p for p in root.iterdir() if p.is_dir()]
    numbered = [p for p in folders if p.name.isascii() and p.name.isdigit()]  # a job's folder
    ids = [int(p.name) for p in numbered]
    states = dict(ImportJob.objects.filter(pk__in=ids).values_list("pk", "state"))
    removed = []
    for p in folders:
        state = states.get(int(p.name)) if p in numbered else None
        if state in (JobState.QUEUED, JobState.RUNNING):
            continue
        if state is not None or p.stat().st_mtime < cutoff:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# Most file systems take 255 bytes per name; keep room for the ' (n)' that _free_name may add.
NAME_BYTES = 240
_DRIVE = re.compile(r"[A-Za-z]:")


def _fit(part: str, limit: int = NAME_BYTES) -> str:
    """Cut a name to ``limit`` UTF-8 bytes, keeping its suffix (the suffix says it's an image)."""
    if len(part.encode()) <= limit:
        return part
    stem, suffix = os.path.splitext(part)
    if len(suffix.encode()) > 16:  # 'a.<300 chars>' has no real suffix to keep
        stem, suffix = part, ""
    return stem.encode()[: limit - len(suffix.encode())].decode("utf-8", "ignore") + suffix


def _clean_part(part: str) -> str:
    # NUL and other control characters can't be in a name (open() raises), lone surrogates can't
    # be encoded; ':' is a plain character on macOS/Linux, so it is kept readable as '_'.
    kept = "".join(c for c in part if unicodedata.category(c) not in ("Cc", "Cs"))
    return _fit(kept.replace(":", "_").strip())


def safe_relative(path: str) -> PurePosixPath:
    """A browser-sent relative path reduced to plain folder and file names ('..', a leading drive
    letter and absolute parts dropped; each name made safe to create, see _clean_part).
    webkitRelativePath starts with the folder the user picked: that folder is the import's root,
    like the folder given to the management command."""
    raw = path.replace("\\", "/").split("/")
    if raw and _DRIVE.fullmatch(raw[0]):
        raw = raw[1:]
    parts = [p for p in map(_clean_part, raw) if p not in ("", ".", "..")]
    parts = parts[1:] if len(parts) > 1 else parts
    return PurePosixPath(*parts) if parts else PurePosixPath("unnamed")


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix, n = target.stem, target.suffix, 1
    while target.exists():  # same name picked twice (e.g. from two folders' roots)
        n += 1
        target = folder / f"{stem} ({n}){suffix}"
    return target


def _stage_one(folder: Path, upload: Uploaded, rel: PurePosixPath) -> None:
    parent = folder.joinpath(*rel.parent.parts)
    parent.mkdir(parents=True, exist_ok=True)
    target = _free_name(parent, rel.name)
    try:
        with open(target, "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)  # half a file would be imported as a truncated image
        raise


def stage_files(files: Iterable[tuple[Uploaded, str]]) -> tuple[Path, list[tuple[str, str]]]:
    """Write uploaded files (with their relative paths) chunk by chunk into a fresh folder.

    Returns the folder and (name, problem) for each file that could not be written there (e.g.
    a file and a folder of the same name, a full disk): those are reported, the rest go on."""
    folder = uploads_root() / f"incoming-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    problems: list[tuple[str, str]] = []
    try:
        for upload, relative in files:
            sent = relative or os.path.basename(upload.name or "")
            rel = safe_relative(sent)
            try:
                _stage_one(folder, upload, rel)
            except (OSError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                shown = "".join(c for c in display_name(sent) if unicodedata.category(c) != "Cc")
                problems.append((shown or str(rel), f"could not be stored for import ({why})"))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, problems
