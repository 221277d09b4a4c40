"""labels.csv, the ZIP export's manifest: the cells the export writes, and reading it back on import.

Folder names can't always spell a tag: the child tag 'vehicle / car' is the folder 'vehicle__car',
'C++' and 'C#' become 'C_-7' and 'C_-8', and a multi-label image saved with no tag sits in
NO_TAGS_FOLDER. The manifest at the ZIP's root names every file's tag paths, so an import with
labels reads it first and lets it decide the tags of each file it lists (folder_labels applies
them). Only a file whose first row is exactly FIELDS is taken for one: a user's own labels.csv
stays a skipped file.

The rows go into a private temporary SQLite file indexed by file name, read line by line: each
imported file's row is then a lookup, and memory stays flat however long the manifest is. A bad
row (not CSV, too long, not UTF-8, an unknown or repeated file) is named in the job's report by
its line, and the rest goes on.
"""
from __future__ import annotations

import csv
import re
import sqlite3
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from .import_sources import MANIFEST, READ_ERRORS, Entry

__all__ = ["FIELDS", "FORMULA_START", "MANIFEST", "NO_TAGS_FOLDER", "Manifests", "Row", "cell", "paths_text"]

FIELDS = ["file_in_zip", "asset_id", "original_name", "tags", "tag_ids"]
# The folder of a multi-label image saved with no tag. Tag folders are made by exporting.safe_name,
# which turns '(' and ')' into '_', so no tag's folder can ever be named this; and it starts with
# neither '.' (an import skips hidden names) nor a character a spreadsheet reads as a formula.
NO_TAGS_FOLDER = "(no tags)"
TAG_SEP, PATH_SEP = "|", " / "
# Under csv's own field limit (131,072 characters), so an overlong cell gets this clear note
# instead of csv's; a row of 200 tags with 200-character paths still fits.
MAX_LINE_BYTES = 100_000
MAX_ROWS_NAMED = 100  # bad rows named one by one; the rest counted in one line
BEAT_ROWS = 1000  # rows between heartbeats while a manifest is read

Note = Callable[[str, str], None]  # (file, message): one 'note' line of the job's report

# What a spreadsheet reads as the start of a formula (the OWASP list); the CSV export uses it too.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ESCAPED = re.compile("'+[" + re.escape("".join(FORMULA_START)) + "]")  # what cell() escaped


def cell(value: str) -> str:
    """A text cell of the manifest. Like the CSV export's cells, one that starts like a formula
    gets a leading apostrophe so a spreadsheet shows it as text; so does one that already starts
    with apostrophes and then such a character, so read_cell can always tell the two apart."""
    if value.startswith(FORMULA_START) or _ESCAPED.match(value):
        return "'" + value
    return value


def read_cell(text: str) -> str:
    """The value cell() wrote."""
    return text[1:] if _ESCAPED.match(text) else text


def tag_paths(tags: str) -> list[tuple[str, ...]]:
    """'vehicle / car|red' -> [('vehicle', 'car'), ('red',)], repeats (whatever their case)
    dropped; '' (saved with no tag) -> []."""
    paths: dict[tuple[str, ...], tuple[str, ...]] = {}
    for path in tags.split(TAG_SEP) if tags else ():
        parts = tuple(path.split(PATH_SEP))
        paths.setdefault(tuple(p.lower() for p in parts), parts)
    return list(paths.values())


def paths_text(paths: list[tuple[str, ...]]) -> str:
    """How the report shows a tag set: "'vehicle / car', 'red'", or 'no tag'."""
    return ", ".join(f"'{PATH_SEP.join(p)}'" for p in paths) or "no tag"


def _file_key(name: str) -> str:
    # As import_sources names a ZIP member: '\\' read as '/', empty and '.' segments dropped.
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


@dataclass(frozen=True, slots=True)
class Row:
    """What a manifest says of one file."""

    manifest: str  # the manifest's name in the report: 'labels.csv', or 'backup.zip/labels.csv'
    line: int
    tags: str  # the tags cell as exported: '|'-joined paths, '' for no tag

    @property
    def paths(self) -> list[tuple[str, ...]]:
        return tag_paths(self.tags)


class _Lines:
    """A manifest's physical lines, read and decoded one at a time. A line longer than
    MAX_LINE_BYTES (never read whole) or not UTF-8 is handed on empty, with why in ``problem``,
    so the row it belongs to is dropped and the rows after it still read."""

    def __init__(self, src: BinaryIO) -> None:
        self.src, self.problem = src, ""

    def __iter__(self) -> Iterator[str]:
        first = True
        while raw := self.src.readline(MAX_LINE_BYTES + 1):
            if first:  # a spreadsheet may have saved it with a byte-order mark
                raw, first = raw.removeprefix(b"\xef\xbb\xbf"), False
            if len(raw) > MAX_LINE_BYTES:
                while raw and not raw.endswith(b"\n"):  # skip to the line's end, a piece at a time
                    raw = self.src.readline(MAX_LINE_BYTES)
                self.problem = f"longer than {MAX_LINE_BYTES:,} bytes"
                yield "\n"
                continue
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.problem = "not UTF-8 text"
                yield "\n"


def _rows(src: BinaryIO) -> Iterator[tuple[int, list[str] | None, str]]:
    """(the line a row starts on, its cells, '') for each row, header included, or (line,
    None, what is wrong with it). Blank lines are left out."""
    lines = _Lines(src)
    reader = csv.reader(lines, strict=True)  # strict: a stray quote is an error, not a guess
    while True:
        start, lines.problem = reader.line_num + 1, ""
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader goes on with the next line
            yield start, None, f"not valid CSV ({exc})"
            continue
        if lines.problem:
            yield start, None, lines.problem
        elif cells:
            yield start, cells, ""


class Manifests:
    """The tagloop manifests of one import (at the root of the folder, of the ZIP, or of each
    uploaded ZIP), their rows indexed by the file they name. Use it in a with block: the index
    is a temporary file, removed on exit."""

    def __init__(self, note: Note, beat: Callable[[], None] = lambda: None) -> None:
        self.note, self.beat = note, beat
        self.db: sqlite3.Connection | None = None
        self.names: list[str] = []  # report name of each manifest read, by its number in the index
        self.scopes: list[str] = []  # ... and the prefix its file names are relative to
        self.n_named = self.n_unnamed = 0

    def __enter__(self) -> Manifests:
        return self

    def __exit__(self, *exc) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def take(self, entries: list[Entry], apply: bool) -> list[Entry]:
        """``entries`` less the tagloop manifests among them. With ``apply`` (an import with
        labels) their rows are read, and rows naming no file of the import are reported; without
        it each manifest is noted as not used. Any other labels.csv stays, to be reported skipped."""
        rest = [e for e in entries if e.scope is None or not self._take(e, apply)]
        if self.db is not None:
            self._unlisted(rest)
        if self.n_unnamed:
            self.note("…", f"{self.n_unnamed} more rows of {MANIFEST} ignored (not named one by one)")
        return rest

    def row(self, entry: Entry) -> Row | None:
        """The manifest's row for this file, if one lists it."""
        if self.db is None:
            return None
        hit = self.db.execute("SELECT manifest, line, tags FROM row WHERE name = ?", (entry.name,)).fetchone()
        return Row(self.names[hit[0]], hit[1], hit[2]) if hit else None

    # reading
    def _take(self, entry: Entry, apply: bool) -> bool:
        """Read ``entry`` if it is a tagloop manifest; False if it is not one: then it is an
        ordinary file of the import, reported skipped (or failed, when it can't be read far
        enough to tell)."""
        try:
            with entry.open() as src:
                rows = _rows(src)
                first = next(rows, None)
                if first is None or first[1] != FIELDS:
                    return False
                if not apply:
                    self.note(entry.name, "tagloop export manifest: not used, as no taxonomy was picked for labels")
                    return True
                self._read(entry, rows, first[0])
        except READ_ERRORS as exc:  # damaged before its header was read: a failed file, like any other
            entry.refusal, entry.kind = f"can't be read ({type(exc).__name__}: {exc})", "failed"
            return False
        return True

    def _read(self, entry: Entry, rows: Iterator[tuple[int, list[str] | None, str]], line: int) -> None:
        db = self._index()
        number = len(self.names)
        self.names.append(entry.name)
        self.scopes.append(entry.scope or "")
        try:
            for n, (line, cells, problem) in enumerate(rows, 1):
                if cells is None:
                    self._bad(number, line, f"{problem}; row ignored")
                elif len(cells) != len(FIELDS):
                    self._bad(number, line, f"{len(FIELDS)} cells expected, {len(cells)} found; row ignored")
                else:
                    self._add(db, number, line, cells)
                if n % BEAT_ROWS == 0:
                    self.beat()
        except READ_ERRORS as exc:  # a damaged member: the rows read so far still count
            self.note(entry.name, f"can't be read after line {line} ({type(exc).__name__}: {exc}); "
                                  "the files of the rows after it get labels from their folders")

    def _add(self, db: sqlite3.Connection, number: int, line: int, cells: list[str]) -> None:
        file = _file_key(cells[0])
        if not file:
            self._bad(number, line, "names no file; row ignored")
            return
        name = self.scopes[number] + file
        added = db.execute("INSERT OR IGNORE INTO row (name, manifest, line, tags) VALUES (?, ?, ?, ?)",
                           (name, number, line, read_cell(cells[3]))).rowcount
        if not added:
            first = db.execute("SELECT line FROM row WHERE name = ?", (name,)).fetchone()[0]
            self._bad(number, line, f"'{file}' listed again (first on line {first}); row ignored")

    def _index(self) -> sqlite3.Connection:
        if self.db is None:
            # '': SQLite's private temporary database, on disk past its page cache, deleted on close.
            self.db = sqlite3.connect("")
            self.db.execute("CREATE TABLE row (name TEXT PRIMARY KEY, manifest INTEGER NOT NULL, line INTEGER NOT NULL,"
                            " tags TEXT NOT NULL, present INTEGER NOT NULL DEFAULT 0)")
        return self.db

    def _unlisted(self, entries: list[Entry]) -> None:
        """Report the rows that name no file of this import (each file once, in any state)."""
        db = self.db
        db.executemany("UPDATE row SET present = 1 WHERE name = ?", ((e.name,) for e in entries))
        absent = db.execute("SELECT manifest, line, name FROM row WHERE present = 0 ORDER BY manifest, line")
        for number, line, name in absent:
            file = name[len(self.scopes[number]):]
            self._bad(number, line, f"'{file}' is not in this import; row ignored")

    def _bad(self, number: int, line: int, message: str) -> None:
        if self.n_named < MAX_ROWS_NAMED:
            self.n_named += 1
            self.note(self.names[number], f"line {line}: {message}")
        else:
            self.n_unnamed += 1
