"""Exports of a taxonomy's labels: CSV, JSON, COCO-style classification JSON, and a ZIP of the
images sorted into one folder per tag.

Everything is a generator of chunks for StreamingHttpResponse: rows are read in keyset pages
of PAGE assets (three queries a page), and the ZIP is written by zipfile into a write-only
buffer that is drained after every chunk, so memory stays flat whatever the library size.
"""
from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Iterator

from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header

from ..models import Asset, Label, Suggestion, Taxonomy

PAGE = 1000
CHUNK = 1024 * 1024
KINDS = ("csv", "json", "coco", "zip")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json", "coco": "application/json",
                 "zip": "application/zip"}
CSV_FIELDS = ["asset_id", "file", "sha256", "width", "height", "tags", "tag_ids", "labeled_by", "labeled_at",
              "source", "model_version", "suggested", "suggested_prob", "probabilities"]


@dataclass
class Record:
    asset: Asset
    label: Label | None
    tags: list[tuple[int, str]]  # (id, path) of the current label
    suggestion: Suggestion | None
    probabilities: dict[str, float]  # tag path -> probability of the live model


def records(taxonomy: Taxonomy, labeled_only: bool = True) -> Iterator[Record]:
    """Every asset of the taxonomy's client (only labeled ones by default), by id."""
    tag_path = {t.pk: t.path for t in taxonomy.tags.select_related("parent")}
    live = taxonomy.live_model
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
            tags = sorted((t.pk, tag_path.get(t.pk, t.name)) for t in label.tags.all()) if label else []
            probs = {tag_path.get(t, str(t)): round(float(p), 5) for t, p in zip(live.tag_ids, s.probs)} if s else {}
            yield Record(asset, label, tags, s, probs)
        last = page[-1].pk


def _row(r: Record, live_version: int | None) -> dict:
    top = r.suggestion
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
        "suggested": next(iter(sorted(r.probabilities, key=lambda k: -r.probabilities[k])), None),
        "suggested_prob": round(float(top.top1_prob), 5) if top else None,
        "probabilities": r.probabilities,
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
        row = _row(r, version)
        row["tags"] = "|".join(row["tags"])
        row["tag_ids"] = "|".join(map(str, row["tag_ids"]))
        row["probabilities"] = json.dumps(row["probabilities"], separators=(",", ":"))
        yield writer.writerow([_cell(row[k]) for k in CSV_FIELDS])


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str | int | float:
    """A CSV cell a spreadsheet shows as text: tag, file and user names come from users, and
    one starting like a formula (=HYPERLINK(...), +cmd|...) would run when the file is opened.
    Such text gets a leading apostrophe (the OWASP rule); numbers are written as they are."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
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
        yield ("," if i else "") + "\n" + json.dumps(_row(r, version))
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


def safe_name(name: str) -> str:
    """One path component: no separators, no '..', never empty."""
    cleaned = _UNSAFE.sub("_", name).strip(" .")
    return cleaned[:120] or "_"


def stream_zip(taxonomy: Taxonomy) -> Iterator[bytes]:
    """images/<tag>/<asset id>-<file name>; a multi-label image sits in each of its tags' folders.
    Files already compressed (JPEG, PNG) are stored, not deflated."""
    pipe = _Pipe()
    missing: list[str] = []
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for r in records(taxonomy):
            base = safe_name(r.asset.original_name.rsplit("/", 1)[-1])
            for _, tag in r.tags:
                folder = "__".join(safe_name(part) for part in tag.split(" / "))
                arcname = f"{safe_name(taxonomy.name)}/{folder}/{r.asset.pk}-{base}"
                try:
                    src = r.asset.file.open("rb")
                except (FileNotFoundError, ValueError):
                    missing.append(r.asset.original_name)
                    continue
                with src, zf.open(zipfile.ZipInfo(arcname, date_time=_date_time(r)), "w", force_zip64=True) as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                        yield pipe.drain()
                yield pipe.drain()
        if missing:
            zf.writestr("MISSING.txt", "\n".join(["files missing on disk:"] + missing) + "\n")
    yield pipe.drain()


def _date_time(r: Record) -> tuple:
    t = r.asset.created
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
