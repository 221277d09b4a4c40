"""Labels an import gives, from a tagloop manifest or from folder names: an import with
--labels-from-folders, or a browser upload with a taxonomy picked. Which tags a file means, and
what a file seen before does to a label.

A file the ZIP export's manifest lists (labels.csv, see manifest.py) gets the tags its row
names, found by path whatever their case ('vehicle / car' is the tag car under vehicle) and
made, parents first, when the taxonomy lacks them; any other file gets its folder's tag.

An import never overwrites a label a person gave (nor one an earlier import made): a folder or
row that disagrees with it is named in the job's report and the label is kept. Only the label
this import made itself may grow: in a multi-label taxonomy the same image in several folders
(as the ZIP export writes a multi-label image) gets every folder's tag.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from django.db import transaction

from ..models import Asset, ImportJob, Label, Tag, tag_name_problem
from . import labels
from .import_sources import Entry
from .manifest import NO_TAGS_FOLDER, PATH_SEP, Manifests, Row, paths_text

log = logging.getLogger(__name__)

LABEL_BATCH = 200  # labels per save (and saved labels grown per save)
NAME_CHARS = Tag._meta.get_field("name").max_length
Note = Callable[[str, str], None]  # (file, message): one 'note' line of the job's report


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


@dataclass(frozen=True, slots=True)
class Wanted:
    """The tags a file asks for, and how the report speaks of them. One object is shared by the
    files of a folder (or of a tag set), as every labeled asset keeps its first one."""

    tag_ids: tuple[int, ...]
    shown: str  # "'nike'", "'vehicle / car', 'red'", "no tag"
    says: str  # "its folder says 'nike'", "labels.csv says 'vehicle / car'"
    where: str  # "a file in 'nike/'", "a file listed in labels.csv"


@dataclass
class Growth:
    """More tags for a label this import already saved (multi-label only)."""

    asset: Asset
    tag_ids: list[int] = field(default_factory=list)
    files: list[tuple[str, Wanted]] = field(default_factory=list)  # (file, what it asked for), for notes


class FolderLabels:
    def __init__(self, job: ImportJob, note: Note, manifests: Manifests | None = None) -> None:
        self.job, self.note, self.manifests = job, note, manifests
        self.taxonomy = job.labels_from_folders
        self.user = job.created_by
        self.by_pk: dict[int, Tag] = {}
        self.children: dict[tuple[int | None, str], Tag] = {}  # (parent id, lower-case name) -> tag
        self.named: dict[str, list[Tag]] = {}  # lower-case name -> the tags of that name, any parent
        for tag in Tag.objects.filter(taxonomy=self.taxonomy):
            self.remember(tag)
        self.refused_folders: set[str] = set()  # folder names that can't be tags, noted once
        self.refused_paths: dict[tuple[str, ...], str] = {}  # lower-case tag path -> why it can't be given
        self.shared: dict[tuple[str, ...], Wanted] = {}
        self.given: dict[int, list[int]] = {}  # asset id -> tag ids this import labeled it with
        self.origin: dict[int, Wanted] = {}  # ... and what the file that gave them asked for
        self.pending: list[tuple[Asset, list[int]]] = []  # not saved yet; the lists are given's
        self.unsaved: set[int] = set()  # asset ids in pending
        self.grown: dict[int, Growth] = {}

    # what a file does
    def label_new(self, entry: Entry, asset: Asset) -> None:
        """A file this import stored, or an unlabeled asset: its row's tags, or its folder's."""
        wanted = self.wanted(entry)
        if wanted is None:
            return
        self.given[asset.pk] = list(wanted.tag_ids)
        self.origin[asset.pk] = wanted
        self.unsaved.add(asset.pk)
        self.pending.append((asset, self.given[asset.pk]))
        if len(self.pending) >= LABEL_BATCH:
            self.save_pending()

    def label_seen(self, entry: Entry, asset: Asset) -> None:
        """A file whose bytes are already an asset, stored earlier or by this import."""
        if asset.pk in self.given:
            self.another_copy(entry, asset)
            return
        current = Label.objects.filter(asset=asset, taxonomy=self.taxonomy, is_current=True).prefetch_related(
            "tags").first()
        if current is None:
            self.label_new(entry, asset)
            return
        tags = list(current.tags.all())
        if says := self.disagreement(entry, tags):
            self.note_kept(entry.name, says, self.paths(tags), asset.pk)

    def disagreement(self, entry: Entry, tags: list[Tag]) -> str:
        """What the file asks for when its label ``tags`` is not that ('' when it agrees, or
        asks for nothing). Read only: no tag is made to say so."""
        row = self.row(entry)
        if row is not None:  # the row is the file's whole tag set
            if {PATH_SEP.join(p).lower() for p in row.paths} != {self.path_of(t).lower() for t in tags}:
                return f"{row.manifest} says {paths_text(row.paths)}"
            return ""
        folder = self.folder(entry)
        if folder == NO_TAGS_FOLDER:
            return f"its folder '{NO_TAGS_FOLDER}' says no tag" if tags and self.taxonomy.multilabel else ""
        if folder and self.usable(folder):
            found = self.find(folder)  # by tag, not name: 'logos / nike' is not the top-level 'nike'
            candidates = found if isinstance(found, list) else [found] if found is not None else []
            if not {t.pk for t in candidates} & {t.pk for t in tags}:
                return f"its folder says '{folder}'"
        return ""

    def another_copy(self, entry: Entry, asset: Asset) -> None:
        """The same bytes twice in this import: single-label keeps the first file's tag (and
        says so when this one asks for another), multi-label takes every file's tags."""
        row = self.row(entry)
        if not self.taxonomy.multilabel:  # read only: a tag this file won't get is not made
            if self.disagreement(entry, [self.by_pk[t] for t in self.given[asset.pk]]):
                first, asked = self.origin[asset.pk], paths_text(row.paths) if row else f"'{self.folder(entry)}'"
                self.note(entry.name, f"same image as {first.where}: labeled {first.shown}, not {asked}")
            return
        wanted = self.from_row(entry, row) if row else self.from_folder(entry, self.folder(entry))
        new = [t for t in wanted.tag_ids if t not in self.given[asset.pk]] if wanted else []
        if not new:
            return
        if asset.pk in self.unsaved:
            self.given[asset.pk].extend(new)  # the list pending holds: saved with it
            return
        growth = self.grown.setdefault(asset.pk, Growth(asset))
        if added := [t for t in new if t not in growth.tag_ids]:
            growth.tag_ids.extend(added)
            growth.files.append((entry.name, wanted))
        if len(self.grown) >= LABEL_BATCH:
            self.save_grown()

    def note_kept(self, file: str, says: str, names: list[str], asset_id: int) -> None:
        kept = quoted(names) or "no tag"
        self.note(file, f"already labeled {kept} (asset #{asset_id}); {says}: kept {kept}")

    # what a file asks for
    def row(self, entry: Entry) -> Row | None:
        return self.manifests.row(entry) if self.manifests else None

    def wanted(self, entry: Entry) -> Wanted | None:
        """The tags for the file: its manifest row's, else its folder's; None: no label (noted
        when something is wrong)."""
        row = self.row(entry)
        if row is not None:
            return self.from_row(entry, row)
        return self.from_folder(entry, self.folder(entry))

    def from_folder(self, entry: Entry, folder: str) -> Wanted | None:
        if not folder:
            return None
        if folder == NO_TAGS_FOLDER:  # an export's images saved with no tag, its manifest left out
            return self.no_tags_folder()
        tag = self.tag_for(folder)
        if tag is None or not self.active(entry, tag):
            return None
        return self.share(("folder", folder), (tag,), f"'{folder}'", f"its folder says '{folder}'",
                          f"a file in '{folder}/'")

    def no_tags_folder(self) -> Wanted | None:
        if self.taxonomy.multilabel:
            return self.share(("folder", NO_TAGS_FOLDER), (), "no tag", f"its folder '{NO_TAGS_FOLDER}' says no tag",
                              f"a file in '{NO_TAGS_FOLDER}/'")
        if NO_TAGS_FOLDER not in self.refused_folders:
            self.refused_folders.add(NO_TAGS_FOLDER)
            self.note(NO_TAGS_FOLDER + "/", f"not labeled: the export's folder of images with no tag, and taxonomy "
                                            f"'{self.taxonomy.name}' takes exactly one tag per image")
        return None

    def from_row(self, entry: Entry, row: Row) -> Wanted | None:
        """The tags a manifest row names. Any of them that can't be given leaves the file
        unlabeled, noted: in a multi-label taxonomy a label also says that each tag it lacks is
        absent, which the row did not say (a tag refused as retired, or found under another
        parent here, is a tag of the taxonomy that would learn a false 'no')."""
        paths = row.paths
        if not self.taxonomy.multilabel and len(paths) != 1:
            # Not labeled rather than given the first tag: a single-label label says "this tag
            # and no other", and the row lists its tags by id, not by importance, so the first
            # would be a guess the model then learns as truth. Unlabeled, the image goes to the
            # review queue, where a person picks.
            self.note(entry.name, f"not labeled: {row.manifest} (line {row.line}) gives it {paths_text(paths)}, and "
                                  f"taxonomy '{self.taxonomy.name}' takes exactly one tag per image")
            return None
        tags = []
        for path in paths:
            tag = self.tag_at(path, row)
            if isinstance(tag, str):
                self.note(entry.name, f"not labeled: tag '{PATH_SEP.join(path)}' ({row.manifest} line {row.line}) "
                                      f"{tag}")
                return None
            if not self.active(entry, tag):
                return None
            tags.append(tag)
        tags.sort(key=lambda t: t.pk)
        text = paths_text(paths)
        return self.share((row.manifest, *map(str, (t.pk for t in tags))), tuple(tags), text,
                          f"{row.manifest} says {text}", f"a file listed in {row.manifest}")

    def share(self, key: tuple[str, ...], tags: tuple[Tag, ...], shown: str, says: str, where: str) -> Wanted:
        if key not in self.shared:
            self.shared[key] = Wanted(tuple(t.pk for t in tags), shown, says, where)
        return self.shared[key]

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

    def find(self, name: str) -> Tag | list[Tag] | None:
        """What a bare name (a folder's) means, read only: the top-level tag of that name
        (whatever its case), else the one tag of that name under any parent (a folder 'nike'
        for 'shoes / nike'); the tags when several parents share it; None when no tag has it."""
        key = name.lower()
        if (tag := self.children.get((None, key))) is not None:
            return tag
        named = self.named.get(key, [])
        return named[0] if len(named) == 1 else (named or None)

    def tag_for(self, folder: str) -> Tag | None:
        """The folder's tag (``find``), else a new top-level tag. A name several parents share
        is not guessed at: noted once, and not labeled."""
        if not folder:
            return None
        found = self.find(folder)
        if isinstance(found, list):
            if folder.lower() not in self.refused_folders:
                self.refused_folders.add(folder.lower())
                self.note(folder + "/", f"not labeled: the folder name '{folder}' is a tag under several parents "
                                        f"({quoted(sorted(self.path_of(t) for t in found))}); a labels.csv row "
                                        "can name one by its path")
            return None
        if found is not None:
            return found
        return self.make(folder, None, folder + "/") if self.usable(folder) else None

    def tag_at(self, path: tuple[str, ...], row: Row) -> Tag | str:
        """The tag at a manifest's tag path (names are unique among siblings, whatever their
        case), made with its missing parents; or why it can't be given (then nothing is made)."""
        key = tuple(name.lower() for name in path)
        if key in self.refused_paths:
            return self.refused_paths[key]
        parent: Tag | None = None
        found = 0  # the start of the path the taxonomy has
        while found < len(path) and (tag := self.children.get((parent.pk if parent else None,
                                                               path[found].lower()))) is not None:
            parent, found = tag, found + 1
        for name in path[found:]:
            problem = f"is longer than {NAME_CHARS} characters" if len(name) > NAME_CHARS else tag_name_problem(name)
            if problem:
                self.refused_paths[key] = f"can't be made: a tag name {problem}"
                return self.refused_paths[key]
        for name in path[found:]:
            parent = self.make(name, parent, row.manifest)
        assert parent is not None  # a manifest path has at least one name
        return parent

    def make(self, name: str, parent: Tag | None, where: str) -> Tag:
        """The tag ``name`` under ``parent``, made unless someone made it meanwhile (the database
        keeps sibling names unique whatever their case)."""
        tag, created = Tag.objects.get_or_create(
            taxonomy=self.taxonomy, parent=parent, name__iexact=name,
            defaults={"name": name, "position": 1 + max((t.position for t in self.by_pk.values()), default=-1)},
        )
        namesakes = [self.path_of(t) for t in self.named.get(tag.name.lower(), []) if t.pk != tag.pk]
        self.remember(tag)
        if created:
            # e.g. a flat export's 'nike' into a taxonomy that has 'shoes / nike': a second tag
            beside = f", beside {quoted(sorted(namesakes))}" if namesakes else ""
            self.note(where, f"new tag '{self.path_of(tag)}' created in taxonomy '{self.taxonomy.name}'{beside}")
        return tag

    def remember(self, tag: Tag) -> None:
        if tag.pk not in self.by_pk:
            self.named.setdefault(tag.name.lower(), []).append(tag)
        self.by_pk[tag.pk] = self.children[(tag.parent_id, tag.name.lower())] = tag

    def path_of(self, tag: Tag) -> str:
        """Tag.path from the tags already read (a parent made since this import began is read once)."""
        parts, node, seen = [], tag, set()
        while node is not None and node.pk not in seen:
            seen.add(node.pk)
            parts.append(node.name)
            if node.parent_id is not None and node.parent_id not in self.by_pk:
                if (parent := Tag.objects.filter(pk=node.parent_id).first()) is not None:
                    self.remember(parent)
            node = self.by_pk.get(node.parent_id) if node.parent_id is not None else None
        return PATH_SEP.join(reversed(parts))

    def paths(self, tags: Iterable[Tag]) -> list[str]:
        return sorted(self.path_of(t) for t in tags)

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
        """Add the tags of later files to labels this import saved, unless a person (or another
        import) has labeled the asset since: then their label is kept, and noted."""
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
                names = self.paths(label.tags.all())
                for file, wanted in batch.pop(label.asset_id).files:
                    self.note_kept(file, wanted.says, names, label.asset_id)
            for asset_id in set(batch) - ours:  # its label was undone meanwhile: left unlabeled
                for file, wanted in batch.pop(asset_id).files:
                    self.note(file, f"not labeled {wanted.shown}: the label of asset #{asset_id} was removed meanwhile")
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
            wanted = self.origin.get(asset_id)
            says = wanted.says if wanted else "this import says otherwise"
            self.note_kept(current.asset.original_name, says, self.paths(current.tags.all()), asset_id)
