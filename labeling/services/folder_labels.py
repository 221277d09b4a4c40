"""Labels from folder names: an import with --labels-from-folders, or a browser folder upload
with a taxonomy picked. Which tag a folder means, and what a file seen before does to a label.

An import never overwrites a label a person gave (nor one an earlier import made): a folder
that disagrees with it is named in the job's report and the label is kept. Only the label this
import made itself may grow: in a multi-label taxonomy the same image in several folders (as
the ZIP export writes a multi-label image) gets every folder's tag.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from django.db import transaction

from ..models import Asset, ImportJob, Label, Tag, tag_name_problem
from . import labels
from .import_sources import Entry

log = logging.getLogger(__name__)

LABEL_BATCH = 200  # labels per save (and saved labels grown per save)
Note = Callable[[str, str], None]  # (file, message): one 'note' line of the job's report


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


@dataclass
class Growth:
    """More folders' tags for a label this import already saved (multi-label only)."""

    asset: Asset
    tag_ids: list[int] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)  # (file, its folder), for notes


class FolderLabels:
    def __init__(self, job: ImportJob, note: Note) -> None:
        self.job, self.note = job, note
        self.taxonomy = job.labels_from_folders
        self.user = job.created_by
        self.tags = {t.name.lower(): t for t in Tag.objects.filter(taxonomy=self.taxonomy)}
        self.refused_folders: set[str] = set()  # folder names that can't be tags, noted once
        self.given: dict[int, list[int]] = {}  # asset id -> tag ids this import labeled it with
        self.folder_of: dict[int, str] = {}  # ... and the folder that label came from first
        self.pending: list[tuple[Asset, list[int]]] = []  # not saved yet; the lists are given's
        self.unsaved: set[int] = set()  # asset ids in pending
        self.grown: dict[int, Growth] = {}

    # what a file does
    def label_new(self, entry: Entry, asset: Asset) -> None:
        """A file this import stored, or an unlabeled asset: its folder's tag."""
        folder = self.folder(entry)
        tag = self.tag_for(folder)
        if tag is None or not self.active(entry, tag):
            return
        self.given[asset.pk] = [tag.pk]
        self.folder_of[asset.pk] = folder
        self.unsaved.add(asset.pk)
        self.pending.append((asset, self.given[asset.pk]))
        if len(self.pending) >= LABEL_BATCH:
            self.save_pending()

    def label_seen(self, entry: Entry, asset: Asset) -> None:
        """A file whose bytes are already an asset, stored earlier or by this import."""
        if asset.pk in self.given:
            self.another_folder(entry, asset)
            return
        current = Label.objects.filter(asset=asset, taxonomy=self.taxonomy, is_current=True).prefetch_related(
            "tags").first()
        if current is None:
            self.label_new(entry, asset)
            return
        names = sorted(t.name for t in current.tags.all())
        folder = self.folder(entry)
        if folder and self.usable(folder) and folder.lower() not in {n.lower() for n in names}:
            self.note_kept(entry.name, folder, names, asset.pk)

    def another_folder(self, entry: Entry, asset: Asset) -> None:
        """The same bytes twice in this import: single-label keeps the first folder's tag (and
        says so), multi-label takes every folder's tag."""
        folder, first = self.folder(entry), self.folder_of.get(asset.pk, "")
        if not folder or folder.lower() == first.lower():
            return
        if not self.taxonomy.multilabel:
            self.note(entry.name, f"same image as a file in '{first}/': labeled '{first}', not '{folder}'")
            return
        tag = self.tag_for(folder)
        if tag is None or tag.pk in self.given[asset.pk] or not self.active(entry, tag):
            return
        if asset.pk in self.unsaved:
            self.given[asset.pk].append(tag.pk)  # the list pending holds: saved with it
            return
        growth = self.grown.setdefault(asset.pk, Growth(asset))
        if tag.pk not in growth.tag_ids:
            growth.tag_ids.append(tag.pk)
            growth.files.append((entry.name, folder))
        if len(self.grown) >= LABEL_BATCH:
            self.save_grown()

    def note_kept(self, file: str, folder: str, names: list[str], asset_id: int) -> None:
        self.note(file, f"already labeled {quoted(names)} (asset #{asset_id}); its folder says '{folder}': "
                        f"kept {quoted(names)}")

    # folders and tags
    @staticmethod
    def folder(entry: Entry) -> str:
        return (entry.folder or "").strip()[:200]

    def usable(self, folder: str) -> bool:
        """Whether the folder name can be a tag; one that can't is noted once."""
        problem = tag_name_problem(folder)
        if problem and folder.lower() not in self.refused_folders:
            self.refused_folders.add(folder.lower())
            self.note(folder + "/", f"not labeled: a tag name {problem}")
        return not problem

    def active(self, entry: Entry, tag: Tag) -> bool:
        if tag.retired:
            self.note(entry.name, f"not labeled: tag '{tag.name}' is retired")
        return not tag.retired

    def tag_for(self, folder: str) -> Tag | None:
        """The folder's tag, made when the taxonomy has none of that name (whatever its case)."""
        if not folder:
            return None
        tag = self.tags.get(folder.lower())
        if tag is None:
            if not self.usable(folder):
                return None
            tag, created = Tag.objects.get_or_create(  # names are unique whatever their case
                taxonomy=self.taxonomy, name__iexact=folder,
                defaults={"name": folder, "position": 1 + max((t.position for t in self.tags.values()), default=-1)},
            )
            self.tags[folder.lower()] = tag
            if created:
                self.note(folder + "/", f"new tag '{folder}' created in taxonomy '{self.taxonomy.name}'")
        return tag

    # saving
    def flush(self) -> None:
        self.save_pending()
        self.save_grown()

    def save_pending(self) -> None:
        if not self.pending:
            return
        batch, self.pending, self.unsaved = self.pending, [], set()
        # Only where no label is current when its row is locked: someone may have labeled the
        # asset since this import looked (the review queue serves new assets at once).
        self.job.n_labeled += len(self.save(batch, fresh=True))

    def save_grown(self) -> None:
        """Add the tags of later folders to labels this import saved, unless a person (or
        another import) has labeled the asset since: then their label is kept, and noted."""
        if not self.grown:
            return
        batch, self.grown = self.grown, {}
        with transaction.atomic():
            # Locked in asset order, as labels._write locks them: a label saved meanwhile is seen.
            current = Label.objects.select_for_update().filter(
                taxonomy=self.taxonomy, is_current=True, asset_id__in=list(batch)).order_by("asset_id")
            ours = set()
            for label in current.prefetch_related("tags"):
                tag_ids = {t.pk for t in label.tags.all()}
                if label.source == Label.Source.IMPORTED and tag_ids == set(self.given[label.asset_id]):
                    ours.add(label.asset_id)
                    continue
                names = sorted(t.name for t in label.tags.all())
                for file, folder in batch.pop(label.asset_id).files:
                    self.note_kept(file, folder, names, label.asset_id)
            for asset_id in set(batch) - ours:  # its label was undone meanwhile: left unlabeled
                for file, folder in batch.pop(asset_id).files:
                    self.note(file, f"not labeled '{folder}': the label of asset #{asset_id} was removed meanwhile")
            saved = self.save([(g.asset, self.given[a] + g.tag_ids) for a, g in batch.items()])
            for asset_id in saved:
                self.given[asset_id] = self.given[asset_id] + batch[asset_id].tag_ids

    def save(self, batch: list[tuple[Asset, list[int]]], fresh: bool = False) -> list[int]:
        """Save labels; returns the ids of the assets labeled. ``fresh``: labels for assets this
        import found unlabeled; one labeled meanwhile keeps that label, and it is noted."""
        if not batch:
            return []
        kept: set[int] | None = set() if fresh else None
        try:
            labels.save_labels(self.taxonomy, batch, user=self.user, source=Label.Source.IMPORTED, kept=kept)
            saved = [asset.pk for asset, _ in batch if not kept or asset.pk not in kept]
        except labels.LabelError as exc:
            # One bad label rolls back its batch: retry one by one so the others still land.
            log.info("import %s: label batch retried one by one after %s", self.job.pk, exc)
            saved, kept = self.save_each(batch, fresh), set()
        for asset_id in kept or ():
            self.given.pop(asset_id, None)
            self.note_taken(asset_id)
        return saved

    def save_each(self, batch: list[tuple[Asset, list[int]]], fresh: bool) -> list[int]:
        saved = []
        for asset, tag_ids in batch:
            try:
                labels.save_label(self.taxonomy, asset, tag_ids, user=self.user, source=Label.Source.IMPORTED,
                                  base_label=None if fresh else labels.NO_CHECK)
                saved.append(asset.pk)
            except labels.LabelConflict:
                self.given.pop(asset.pk, None)
                self.note_taken(asset.pk)
            except labels.LabelError as one:
                self.note(asset.original_name, f"not labeled: {one}")
        return saved

    def note_taken(self, asset_id: int) -> None:
        """The asset was labeled by someone else while this import ran: theirs is kept."""
        current = Label.objects.filter(asset_id=asset_id, taxonomy=self.taxonomy, is_current=True).prefetch_related(
            "tags").select_related("asset").first()
        if current is not None:
            folder = self.folder_of.get(asset_id, "")
            self.note_kept(current.asset.original_name, folder, sorted(t.name for t in current.tags.all()), asset_id)
