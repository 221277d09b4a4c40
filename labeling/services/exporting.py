"""Exports of a taxonomy's labels: CSV, JSON, COCO-style classification JSON, and a ZIP of the
images sorted into one folder per tag, with a manifest (labels.csv, manifest.py) mapping each
file back to its tags, which an import with labels reads.

Everything is a generator of chunks for StreamingHttpResponse: rows are read in keyset pages
of PAGE assets (three queries a page), and the ZIP is written by zipfile into a write-only
buffer that is drained after every chunk, so memory stays flat whatever the library size (the
ZIP's manifest waits in a temporary file, spilled to disk past MANIFEST_IN_MEMORY).
"""
from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterator

from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header

from ..models import Asset, Label, Suggestion, Tag, Taxonomy
from .labels import retired_among
from .manifest import FIELDS as MANIFEST_FIELDS
from .manifest import FORMULA_START, MANIFEST, NO_TAGS_FOLDER, cell
from .suggesting import as_shown

PAGE = 1000
CHUNK = 1024 * 1024
KINDS = ("csv", "json", "coco", "zip")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json", "coco": "application/json",
                 "zip": "application/zip"}
CSV_FIELDS = ["asset_id", "file", "sha256", "width", "height", "tags", "tag_ids", "labeled_by", "labeled_at",
              "source", "model_version", "suggested", "suggested_prob", "probabilities", "held_out", "audit"]


@dataclass
class Record:
    asset: Asset
    label: Label | None
    tags: list[tuple[int, str]]  # (id, path) of the current label
    suggestion: Suggestion | None
    probabilities: dict[str, float]  # tag path -> probability of the live model
    suggested: list[str]  # what the app suggests (labels.suggested_tag_ids), most probable first
    held_out: bool | None  # the live model's run held the image out (never trained on it); None: not recorded


def records(taxonomy: Taxonomy, labeled_only: bool = True) -> Iterator[Record]:
    """Every asset of the taxonomy's client (only labeled ones by default), by id."""
    tags = {t.pk: t for t in taxonomy.tags.select_related("parent")}
    tag_path = {pk: t.path for pk, t in tags.items()}
    retired = retired_among(tags)
    live = taxonomy.live_model
    # what the live model was judged on, so its held-out scores can be recomputed from the export
    recorded = (live.metrics or {}).get("holdout_assets") if live is not None else None
    held_out = None if recorded is None else set(recorded)
    last = 0
    while True:
        qs = Asset.objects.filter(client_id=taxonomy.client_id, pk__gt=last)
        if labeled_only:
            qs = qs.filter(labels__taxonomy=taxonomy, labels__is_current=True)
        page = list(qs.order_by("pk")[:PAGE])
        if not page:
            return
        ids = [a.pk for a in page]
        labels = {
            lb.asset_id: lb
            for lb in Label.objects.filter(taxonomy=taxonomy, is_current=True, asset_id__in=ids)
            .select_related("user").prefetch_related("tags")
        }
        suggestions = {}
        if live is not None:
            suggestions = {s.asset_id: s for s in Suggestion.objects.filter(model_version=live, asset_id__in=ids)}
        for asset in page:
            label, s = labels.get(asset.pk), suggestions.get(asset.pk)
            names = sorted((t.pk, tag_path.get(t.pk, t.name)) for t in label.tags.all()) if label else []
            probs, suggested = {}, []
            if s:
                s.model_version = live  # the row's own version, without a query per row
                s, shown = as_shown(taxonomy, s, tags, retired)
                probs = {tag_path.get(t, str(t)): round(float(p), 5) for t, p in zip(live.tag_ids, s.probs)}
                by_prob = dict(zip(live.tag_ids, s.probs))
                suggested = [tag_path.get(t, str(t)) for t in sorted(shown, key=lambda t: (-by_prob.get(t, 0.0), t))]
            yield Record(asset, label, names, s, probs, suggested, None if held_out is None else asset.pk in held_out)
        last = page[-1].pk


def _row(r: Record, live_version: int | None, multilabel: bool) -> dict:
    top = r.suggestion
    best = r.suggested[0] if r.suggested else None
    return {
        "asset_id": r.asset.pk,
        "file": r.asset.original_name,
        "sha256": r.asset.sha256,
        "width": r.asset.width,
        "height": r.asset.height,
        "tags": [name for _, name in r.tags],
        "tag_ids": [tid for tid, _ in r.tags],
        "labeled_by": r.label.user.get_username() if r.label and r.label.user else None,
        "labeled_at": r.label.created.isoformat() if r.label else None,
        "source": r.label.source if r.label else None,
        "model_version": live_version if top else None,
        # single-label: one tag (or None); multi-label: the list of tags over their thresholds
        "suggested": r.suggested if multilabel else best,
        "suggested_prob": r.probabilities.get(best) if best else None,  # multi-label: of the first
        "probabilities": r.probabilities,
        "held_out": r.held_out,
        "audit": r.label.audit if r.label else None,
    }


class _Echo:
    """csv.writer target that hands back what it was given."""

    def write(self, value: str) -> str:
        return value


def stream_csv(taxonomy: Taxonomy, labeled_only: bool = True) -> Iterator[str]:
    writer = csv.writer(_Echo())
    version = taxonomy.live_model.version if taxonomy.live_model else None
    yield writer.writerow(CSV_FIELDS)
    for r in records(taxonomy, labeled_only):
        row = _row(r, version, taxonomy.multilabel)
        row["tags"] = "|".join(row["tags"])
        if isinstance(row["suggested"], list):
            row["suggested"] = "|".join(row["suggested"])
        row["tag_ids"] = "|".join(map(str, row["tag_ids"]))
        row["probabilities"] = json.dumps(row["probabilities"], separators=(",", ":"))
        yield writer.writerow([_cell(row[k]) for k in CSV_FIELDS])


def _cell(value) -> str | int | float:
    """A CSV cell a spreadsheet shows as text: tag, file and user names come from users, and
    one starting like a formula (=HYPERLINK(...), +cmd|...) would run when the file is opened.
    Such text gets a leading apostrophe (the OWASP rule); numbers are written as they are."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _header(taxonomy: Taxonomy) -> dict:
    live = taxonomy.live_model
    return {
        "client": taxonomy.client.slug,
        "taxonomy": {"id": taxonomy.pk, "name": taxonomy.name, "kind": taxonomy.kind},
        "model_version": {"id": live.pk, "version": live.version, "backbone": live.backbone} if live else None,
        "exported": timezone.now().isoformat(),
    }


def stream_json(taxonomy: Taxonomy, labeled_only: bool = True) -> Iterator[str]:
    head = json.dumps(_header(taxonomy))
    yield head[:-1] + ', "assets": ['
    version = taxonomy.live_model.version if taxonomy.live_model else None
    for i, r in enumerate(records(taxonomy, labeled_only)):
        yield ("," if i else "") + "\n" + json.dumps(_row(r, version, taxonomy.multilabel))
    yield "\n]}\n"


def stream_coco(taxonomy: Taxonomy) -> Iterator[str]:
    """COCO-style classification: images, categories, and one annotation per (image, tag)
    (a whole-image label has no bbox). Two passes over the labels, images then annotations,
    so neither list has to be held in memory."""
    head = _header(taxonomy)
    categories = [
        {"id": t.pk, "name": t.path, "supercategory": t.parent.path if t.parent_id else ""}
        for t in taxonomy.tags.select_related("parent")
    ]
    info = {"description": f"tagloop export of {head['client']}/{taxonomy.name}", "date_created": head["exported"],
            "model_version": head["model_version"]}
    yield json.dumps({"info": info, "categories": categories})[:-1] + ', "images": ['
    for i, r in enumerate(records(taxonomy)):
        image = {"id": r.asset.pk, "file_name": r.asset.original_name, "width": r.asset.width, "height": r.asset.height}
        yield ("," if i else "") + "\n" + json.dumps(image)
    yield '\n], "annotations": ['
    n = 0
    for r in records(taxonomy):
        for tag_id, name in r.tags:
            n += 1
            ann = {"id": n, "image_id": r.asset.pk, "category_id": tag_id,
                   "score": r.probabilities.get(name), "labeled_by": r.label.user.get_username() if r.label.user else None}
            yield ("," if n > 1 else "") + "\n" + json.dumps(ann)
    yield "\n]}\n"


class _Pipe(io.RawIOBase):
    """Write-only, unseekable: zipfile then writes data descriptors and never seeks back, and
    whatever it wrote is taken out with drain()."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


_UNSAFE = re.compile(r"[^\w.\- ]+")
NAME_CHARS = 120
MANIFEST_IN_MEMORY = 8 * 1024 * 1024


def safe_name(name: str) -> str:
    """One path component: no separators, no '..', never empty, at most NAME_CHARS characters.
    A long name loses the end of its stem, not its extension (which says what the file is)."""
    cleaned = _UNSAFE.sub("_", name).strip(" .")
    stem, dot, ext = cleaned.rpartition(".")
    if len(cleaned) > NAME_CHARS and stem and len(ext) <= 16:  # 'x.<200 chars>' has no extension to keep
        cleaned = stem[: NAME_CHARS - len(ext) - 1].rstrip(" .") + dot + ext
    return cleaned[:NAME_CHARS] or "_"


def path_folder(tag_path: str) -> str:
    """A tag path as one folder name: 'shoes / nike' -> 'shoes__nike'."""
    return "__".join(safe_name(part) for part in tag_path.split(" / "))


def tag_folders(tags: list[Tag]) -> dict[int, str]:
    """A folder name per tag, unique in the export whatever its case: 'C++' and 'C#' both make
    'C_', so those get their tag id ('C_-7'). A tag whose name is already a safe folder name
    keeps it, so an import with labels from folders gives it back its tag. None is ever
    NO_TAGS_FOLDER: safe_name leaves no '(' in a name."""
    natural = {t.pk: path_folder(t.path) for t in tags}
    count = Counter(name.lower() for name in natural.values())
    plain = {t.pk for t in tags if count[natural[t.pk].lower()] == 1 or natural[t.pk] == t.name}
    used: set[str] = set()
    folders = {}
    for t in sorted(tags, key=lambda t: (t.pk not in plain, t.pk)):
        name = natural[t.pk] if t.pk in plain else f"{natural[t.pk]}-{t.pk}"
        while name.lower() in used:  # a tag literally named 'C_-7'
            name = f"{name}-{t.pk}"
        used.add(name.lower())
        folders[t.pk] = name
    return folders


def stream_zip(taxonomy: Taxonomy) -> Iterator[bytes]:
    """<taxonomy>/<tag folder>/<asset id>-<file name>; a multi-label image sits in each of its
    tags' folders, one saved with no tag in NO_TAGS_FOLDER. labels.csv at the root has a row per
    file: its path in the ZIP, asset id, original name and tag paths (what a folder name can't
    always spell; empty for no tag). Files already compressed (JPEG, PNG) are stored, not deflated."""
    pipe = _Pipe()
    folders = tag_folders(list(taxonomy.tags.select_related("parent")))
    root = _root_folder(taxonomy)
    missing: list[str] = []
    with tempfile.SpooledTemporaryFile(MANIFEST_IN_MEMORY) as manifest, \
            zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        manifest.write(_csv_line(MANIFEST_FIELDS))
        for r in records(taxonomy):
            base = safe_name(r.asset.original_name.rsplit("/", 1)[-1])
            for folder in _folders_of(r, folders):
                arcname = f"{root}/{folder}/{r.asset.pk}-{base}"
                try:
                    src = r.asset.file.open("rb")
                except (FileNotFoundError, ValueError):
                    missing.append(r.asset.original_name)
                    continue
                with src:
                    yield from _member(zf, pipe, zipfile.ZipInfo(arcname, date_time=_date_time(r.asset.created)), src)
                manifest.write(_csv_line([arcname, r.asset.pk, cell(r.asset.original_name),
                                          cell("|".join(name for _, name in r.tags)),
                                          "|".join(str(pk) for pk, _ in r.tags)]))
        if missing:
            zf.writestr("MISSING.txt", "\n".join(["files missing on disk:"] + missing) + "\n")
        manifest.seek(0)
        info = zipfile.ZipInfo(MANIFEST, date_time=_date_time(timezone.now()))
        info.compress_type = zipfile.ZIP_DEFLATED  # text, unlike the images
        yield from _member(zf, pipe, info, manifest)
    yield pipe.drain()


def _folders_of(r: Record, folders: dict[int, str]) -> list[str]:
    """The folders a labeled image goes in: one per tag, or NO_TAGS_FOLDER for a multi-label
    image saved with no tag ("none applies" is a label too, and a restore must give it back)."""
    for tag_id, tag_path in r.tags:
        if tag_id not in folders:  # a tag made while the export streams: its own folder
            folders[tag_id] = f"{path_folder(tag_path)}-{tag_id}"
    return [folders[tag_id] for tag_id, _ in r.tags] or [NO_TAGS_FOLDER]


def _root_folder(taxonomy: Taxonomy) -> str:
    # Never '-...': the manifest's file_in_zip must not start like a formula, and it can't take
    # _cell's apostrophe without no longer naming the file. Never the name of a file beside it.
    root = safe_name(taxonomy.name).lstrip("-") or "_"
    return root + "_" if root.lower() in (MANIFEST.lower(), "missing.txt") else root


def _member(zf: zipfile.ZipFile, pipe: _Pipe, info: zipfile.ZipInfo, src: BinaryIO) -> Iterator[bytes]:
    """Copy src into the ZIP as info, handing on what is written after every CHUNK."""
    with zf.open(info, "w", force_zip64=True) as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            yield pipe.drain()
    yield pipe.drain()


def _csv_line(cells: list) -> bytes:
    return csv.writer(_Echo()).writerow(cells).encode()


def _date_time(t: datetime) -> tuple:
    return (max(t.year, 1980), t.month, t.day, t.hour, t.minute, t.second)


def response(taxonomy: Taxonomy, kind: str, labeled_only: bool = True) -> StreamingHttpResponse:
    """The streamed download of one export kind, named <client>-<taxonomy>.<ext>."""
    if kind not in KINDS:
        raise ValueError(f"kind: one of {', '.join(KINDS)}")
    if kind == "csv":
        body = stream_csv(taxonomy, labeled_only)
    elif kind == "json":
        body = stream_json(taxonomy, labeled_only)
    elif kind == "coco":
        body = stream_coco(taxonomy)
    else:
        body = stream_zip(taxonomy)
    ext = {"coco": "coco.json"}.get(kind, kind)
    resp = StreamingHttpResponse(body, content_type=CONTENT_TYPES[kind])
    name = f"{safe_name(taxonomy.client.slug)}-{safe_name(taxonomy.name)}.{ext}".replace(" ", "_")
    # filename*=UTF-8'' for non-ASCII taxonomy names, which a plain header would mangle
    resp["Content-Disposition"] = content_disposition_header(True, name)
    resp["Cache-Control"] = "private, no-store"
    return resp
