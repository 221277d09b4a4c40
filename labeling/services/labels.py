"""Saving, undoing and importing labels.

Every change of an asset's tags (a label, an undo) bumps the taxonomy's retrain counter in the
same transaction and, once committed, asks Celery to check whether a retrain is due. If the
broker is down the label is still saved; the periodic sweep (labeling.tasks.sweep) finds the
due retrain later.
"""
from __future__ import annotations

from typing import Collection, Iterable, Iterator, Sequence

from django.db import IntegrityError, transaction
from django.db.models import F, Max

from ..models import Asset, BulkAction, Label, LabelEvent, ModelVersion, Suggestion, Tag, Taxonomy
from ..permissions import real_user
from .audit import record_draws, served_for_audit


class LabelError(ValueError):
    """Bad label input; the message names the field."""


class LabelConflict(LabelError):
    """The asset's current label is no longer the one the writer saw (``base_label``), so the
    write was refused rather than silently replacing someone else's work. Nothing was saved."""

    def __init__(self, current: "Label | None") -> None:
        super().__init__("base_label: the asset's label changed since it was loaded")
        self.current = current


# save_label(base_label=NO_CHECK): last write wins (imports, bulk actions). Any other value,
# None included ("it was unlabeled"), must equal the current label's id or LabelConflict is raised.
NO_CHECK = object()
# A writer that loses the race for the first label of an asset retries this often (no check).
WRITE_ATTEMPTS = 3
# Assets per statement in save_labels: bounds the IN lists and each savepoint's retry.
CHUNK = 500


def validate_tags(taxonomy: Taxonomy, tag_ids: Sequence[int]) -> list[Tag]:
    """The active tags ``tag_ids`` name. A multi-label image may have none: "none of these
    tags applies" is an answer, and the negative example every tag's classifier learns from."""
    if not tag_ids:
        if taxonomy.multilabel:
            return []
        raise LabelError("tags: pick at least one tag")
    ids = list(dict.fromkeys(int(t) for t in tag_ids))
    tags = list(Tag.objects.filter(taxonomy=taxonomy, pk__in=ids, retired=False))
    if len(tags) != len(ids):
        raise LabelError("tags: unknown or retired tag for this taxonomy")
    if not taxonomy.multilabel and len(tags) > 1:
        raise LabelError("tags: this taxonomy takes exactly one tag per asset")
    return tags


def retired_tag_ids(taxonomy: Taxonomy) -> set[int]:
    return set(taxonomy.tags.filter(retired=True).values_list("pk", flat=True))


def retired_among(tags: dict[int, Tag]) -> set[int]:
    """retired_tag_ids from a taxonomy's tags already read (id -> Tag), without a query."""
    return {pk for pk, tag in tags.items() if tag.retired}


def suggested_tag_ids(taxonomy: Taxonomy, suggestion: Suggestion, retired: Collection[int] | None = None) -> set[int]:
    """What the model proposed: its top-1 tag, or every tag over its threshold (multi-label).
    Tags retired since the model was trained are never proposed (accepting one would be
    refused): single-label falls back to the most probable active tag. Pass `retired` when
    calling in a loop."""
    retired = retired_tag_ids(taxonomy) if retired is None else retired
    mv = suggestion.model_version
    if not taxonomy.multilabel:
        if suggestion.top1_tag_id and suggestion.top1_tag_id not in retired:
            return {suggestion.top1_tag_id}
        active = [(tid, p) for tid, p in zip(mv.tag_ids, suggestion.probs) if tid not in retired]
        return {max(active, key=lambda tp: tp[1])[0]} if active else set()  # ties: the model's first, as in the ranking
    thresholds = (mv.metrics or {}).get("thresholds") or [0.5] * len(mv.tag_ids)
    return {tid for tid, p, t in zip(mv.tag_ids, suggestion.probs, thresholds) if p >= t and tid not in retired}


def _source_for(taxonomy: Taxonomy, tags: list[Tag], suggestion: Suggestion | None, retired: Collection[int]) -> str:
    if suggestion is None:
        return Label.Source.MANUAL
    if {t.pk for t in tags} == suggested_tag_ids(taxonomy, suggestion, retired):
        return Label.Source.ACCEPTED
    return Label.Source.CORRECTED


def save_label(
    taxonomy: Taxonomy,
    asset: Asset,
    tag_ids: Sequence[int],
    user=None,
    source: str | None = None,
    notify: bool = True,
    batch: BulkAction | None = None,
    base_label: "int | None | object" = NO_CHECK,
    audit: bool = False,
) -> Label:
    """Store the asset's current label (older ones stay as history) and count it toward a retrain
    unless its tags are the current ones (a confirmation: recorded, but nothing new to learn).

    ``notify=False`` leaves the retrain check to the caller (bulk saves send one, not one each).
    ``base_label``: the current label id the writer saw (None: unlabeled); LabelConflict when
    it changed meanwhile. Left out, the write replaces whatever is current.
    ``audit``: the writer was served the asset in the queue's audit order, blind. The label is
    marked an audit label only if the server's lease says so too (the rule: services.audit).
    """
    if asset.client_id != taxonomy.client_id:
        raise LabelError("asset: not in this taxonomy's client")
    tags = validate_tags(taxonomy, tag_ids)
    with transaction.atomic():
        for attempt in range(WRITE_ATTEMPTS):
            try:
                # A savepoint, so losing the race below leaves the caller's transaction usable.
                with transaction.atomic():
                    served = served_for_audit(taxonomy, user, [asset.pk]) if audit else set()
                    [label], changed = _write(taxonomy, [(asset.pk, tags)], real_user(user), source, batch,
                                              retired_tag_ids(taxonomy), base_label, audit=served)
                break
            except IntegrityError:
                # Another writer's first label of this asset became current after our read
                # (one_current_label): with a check that is a conflict, without one read again.
                if base_label is not NO_CHECK or attempt == WRITE_ATTEMPTS - 1:
                    raise LabelConflict(current_label(taxonomy, asset)) from None
        count_changes(taxonomy, changed)
        if notify:
            transaction.on_commit(lambda: request_retrain_check(taxonomy.pk))
    return label


def save_labels(
    taxonomy: Taxonomy,
    items: Iterable[tuple[Asset, Sequence[int]]],
    user=None,
    source: str | None = None,
    batch: BulkAction | None = None,
    notify: bool = True,
    kept: set[int] | None = None,
    merge: bool = False,
) -> int:
    """``save_label`` for many assets in one transaction, last write wins: the same rows (a Label,
    its tags and a SET event per item, older labels kept as history), but a few queries per
    CHUNK assets instead of a dozen per asset. The retrain counter is bumped once, as the last
    statement: that UPDATE locks the taxonomy row until commit, and every other label of the
    taxonomy waits for that lock, so it must not be taken at the start of a long action.
    With ``kept`` (a set to fill), assets that have a label when their row is locked keep it and
    their ids are added to ``kept`` (imports: a label given meanwhile is never replaced).
    ``merge`` (multi-label): the given tags are added to each asset's current ones.
    Returns how many labels were saved. Any bad item (LabelError) saves nothing."""
    rows: list[tuple[int, list[Tag]]] = []
    valid: dict[tuple, list[Tag]] = {}
    for asset, tag_ids in items:
        if asset.client_id != taxonomy.client_id:
            raise LabelError("asset: not in this taxonomy's client")
        key = tuple(tag_ids)
        if key not in valid:
            valid[key] = validate_tags(taxonomy, tag_ids)
        rows.append((asset.pk, valid[key]))
    if not rows:
        return 0
    user, retired, changed, saved = real_user(user), retired_tag_ids(taxonomy), 0, 0
    with transaction.atomic():
        for chunk in _chunks(rows):
            for attempt in range(WRITE_ATTEMPTS):
                try:
                    with transaction.atomic():  # a savepoint: a lost race is retried on fresh reads
                        todo = chunk if kept is None else _unlabeled(taxonomy, chunk, kept)
                        changed += _write(taxonomy, todo, user, source, batch, retired, merge=merge)[1] if todo else 0
                    saved += len(todo)
                    break
                except IntegrityError:
                    # A concurrent first label of one of these assets (one_current_label).
                    if attempt == WRITE_ATTEMPTS - 1:
                        raise LabelError("assets: labeled by someone else at the same moment; try again") from None
        count_changes(taxonomy, changed)
        if notify:
            transaction.on_commit(lambda: request_retrain_check(taxonomy.pk))
    return saved


def _unlabeled(taxonomy: Taxonomy, chunk: list[tuple[int, list[Tag]]], kept: set[int]) -> list[tuple[int, list[Tag]]]:
    """The rows whose asset has no current label, its label locked meanwhile (a first label saved
    after this read loses its race in _write: IntegrityError, and the chunk is read again)."""
    labeled = set(Label.objects.select_for_update().filter(
        taxonomy=taxonomy, is_current=True, asset_id__in=[a for a, _ in chunk]).order_by("asset_id")
        .values_list("asset_id", flat=True))
    kept |= labeled
    return [row for row in chunk if row[0] not in labeled]


def _chunks(rows: list[tuple[int, list[Tag]]]) -> Iterator[list[tuple[int, list[Tag]]]]:
    """Runs of at most CHUNK rows in which no asset repeats: an asset labeled twice in one call
    gets two labels in order (the first one kept as history), as two save_label calls would."""
    chunk: list[tuple[int, list[Tag]]] = []
    seen: set[int] = set()
    for row in rows:
        if len(chunk) == CHUNK or row[0] in seen:
            yield chunk
            chunk, seen = [], set()
        chunk.append(row)
        seen.add(row[0])
    yield chunk


def _write(
    taxonomy: Taxonomy,
    rows: list[tuple[int, list[Tag]]],
    user,
    source: str | None,
    batch: BulkAction | None,
    retired: Collection[int],
    base_label: "int | None | object" = NO_CHECK,
    merge: bool = False,
    audit: Collection[int] = (),
) -> tuple[list[Label], int]:
    """Make ``rows`` (distinct asset ids with validated tags) the current labels; returns the new
    labels and how many of them change the training data (tags differ from the current ones).
    ``merge`` (multi-label): each new label keeps the tags its asset's current one has, read
    under the row lock, so a tag a colleague added meanwhile is not dropped.
    ``audit``: assets served to the writer in the audit order; their labels are audit labels if
    the asset is unlabeled and the live model scored it (services.audit.served_for_audit), and
    drawn for the version they answer (one live since it was served has no draw of it yet).
    Raises IntegrityError when another writer's first label of one of the assets won the race."""
    asset_ids = [a for a, _ in rows]
    # Locked in asset order (and bulk.apply sends its assets sorted), so two bulk actions over
    # overlapping assets take these row locks in the same order rather than deadlocking.
    previous = {
        label.asset_id: label
        for label in Label.objects.select_for_update()
        .filter(taxonomy=taxonomy, asset_id__in=asset_ids, is_current=True)
        .order_by("asset_id")
    }
    if base_label is not NO_CHECK:
        [asset_id] = asset_ids
        if (previous[asset_id].pk if asset_id in previous else None) != base_label:
            # Re-read: under READ COMMITTED a label committed during our lock wait is only
            # visible to a new statement, and that is the one the writer must be shown.
            raise LabelConflict(Label.objects.filter(taxonomy=taxonomy, asset_id=asset_id, is_current=True).first())
    before = tag_ids_by_label([label.pk for label in previous.values()])
    if merge and previous:
        rows = _merged(rows, {a: before[label.pk] for a, label in previous.items()})
    suggestions = live_suggestions(taxonomy, asset_ids)
    if previous:
        Label.objects.filter(pk__in=[label.pk for label in previous.values()]).update(is_current=False)
    new = Label.objects.bulk_create([
        Label(asset_id=a, taxonomy=taxonomy, user=user, batch=batch, suggestion=suggestions.get(a),
              model_version_id=suggestions[a].model_version_id if a in suggestions else None,
              audit=a in audit and a not in previous and a in suggestions,
              source=source or _source_for(taxonomy, tags, suggestions.get(a), retired))
        for a, tags in rows
    ])
    through = Label.tags.through
    through.objects.bulk_create(
        [through(label_id=label.pk, tag_id=t.pk) for label, (_, tags) in zip(new, rows) for t in tags]
    )
    if answered := [label.asset_id for label in new if label.audit]:
        record_draws(taxonomy, user, answered, taxonomy.live_model_id)
    events, changed = [], 0
    for label, (a, tags) in zip(new, rows):
        was = before.get(previous[a].pk) if a in previous else None
        now = sorted(t.pk for t in tags)
        changed += was != now
        events.append(LabelEvent(taxonomy=taxonomy, asset_id=a, user=user, action=LabelEvent.Action.SET,
                                 label=label, before=was, after=now, source=label.source))
    LabelEvent.objects.bulk_create(events)
    Suggestion.objects.filter(taxonomy=taxonomy, asset_id__in=asset_ids).update(is_labeled=True)
    return new, changed


def _merged(rows: list[tuple[int, list[Tag]]], current: dict[int, list[int]]) -> list[tuple[int, list[Tag]]]:
    """Each row's tags plus the ones its asset's current label has (ordered by id)."""
    have = Tag.objects.in_bulk({t for ids in current.values() for t in ids})
    out = []
    for a, tags in rows:
        union = {t.pk: t for t in tags} | {t: have[t] for t in current.get(a, ()) if t in have}
        out.append((a, [union[t] for t in sorted(union)]))
    return out


def tag_ids_by_label(label_ids: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {pk: [] for pk in label_ids}
    through = Label.tags.through
    for label_id, tag_id in through.objects.filter(label_id__in=label_ids).order_by("tag_id").values_list(
        "label_id", "tag_id"
    ):
        out[label_id].append(tag_id)
    return out


def live_suggestions(taxonomy: Taxonomy, asset_ids: list[int]) -> dict[int, Suggestion]:
    if taxonomy.live_model_id is None:
        return {}
    mv = ModelVersion.objects.get(pk=taxonomy.live_model_id)
    rows = list(Suggestion.objects.filter(model_version=mv, asset_id__in=asset_ids))
    for s in rows:
        s.model_version = mv  # one read of the version (its metrics can be large), not one per row
    return {s.asset_id: s for s in rows}


def count_changes(taxonomy: Taxonomy, changes: int) -> None:
    """Count changes of the training data toward the next retrain. A label whose tags equal the
    current ones (a confirmation) or an undo that restores the same tags teaches nothing new."""
    if changes:
        Taxonomy.objects.filter(pk=taxonomy.pk).update(labels_since_train=F("labels_since_train") + changes)


def current_label(taxonomy: Taxonomy, asset: Asset, for_update: bool = False) -> Label | None:
    qs = Label.objects.filter(asset=asset, taxonomy=taxonomy, is_current=True)
    return (qs.select_for_update() if for_update else qs).first()


def tag_ids_of(label: Label | None) -> list[int] | None:
    return None if label is None else sorted(label.tags.values_list("id", flat=True))





def remove_labels(taxonomy: Taxonomy, current: dict[int, int], user=None, source: str = "") -> int:
    """Delete current labels ({label id: asset id}, locked by the caller, inside its
    transaction), make the label before each current again (or put the asset back in the
    queue) and record the undos, in a fixed number of queries however many (a bulk undo of
    5,000 labels took ~8 statements each, its locks held throughout). Returns how many assets'
    tags changed (the caller counts that toward the retrain)."""
    if not current:
        return 0
    undone = tag_ids_by_label(list(current))
    Label.objects.filter(pk__in=list(current)).delete()
    previous = dict(Label.objects.filter(taxonomy=taxonomy, asset_id__in=list(current.values()))
                    .values("asset_id").annotate(last=Max("id")).values_list("asset_id", "last"))
    Label.objects.filter(pk__in=list(previous.values())).update(is_current=True)
    Suggestion.objects.filter(taxonomy=taxonomy, asset_id__in=set(current.values()) - set(previous)) \
        .update(is_labeled=False)
    restored = tag_ids_by_label(list(previous.values()))
    events = []
    for label_id, asset_id in current.items():
        back = previous.get(asset_id)
        events.append(LabelEvent(taxonomy=taxonomy, asset_id=asset_id, user=real_user(user),
                                 action=LabelEvent.Action.UNDO, label_id=back, before=undone[label_id],
                                 after=None if back is None else restored[back], source=source))
    LabelEvent.objects.bulk_create(events, batch_size=1000)
    return sum(e.before != e.after for e in events)


class UndoRefused(LabelError):
    """The user's last label is no longer the asset's current one (a colleague changed it since):
    undoing it would remove their work, and undoing an older label instead, unasked, would
    surprise. ``label_id``: the refused label; pass it as ``undo_last(before=...)`` to go on to
    the older ones once the user has been told."""

    def __init__(self, message: str, label_id: int) -> None:
        super().__init__(message)
        self.label_id = label_id


def undo_last(taxonomy: Taxonomy, user, before: int | None = None) -> Label | None:
    """Undo this user's last label in the taxonomy (with ``before``: their last one older than
    that label id), if it is still the asset's current label, and restore the one before it.
    Labels already undone are passed over, so repeated undos walk back through the user's
    labels. None: nothing of theirs to undo. UndoRefused: that one was changed by someone else
    since (nothing is undone)."""
    with transaction.atomic():
        for _ in range(WRITE_ATTEMPTS):
            # An undone label is deleted, which nulls its SET event's label.
            events = LabelEvent.objects.filter(taxonomy=taxonomy, user=user, action=LabelEvent.Action.SET,
                                               label__isnull=False)
            if before is not None:
                events = events.filter(label_id__lt=before)
            event = events.order_by("-id").first()
            if event is None:
                return None
            label = Label.objects.select_for_update().filter(pk=event.label_id).select_related("asset").first()
            if label is not None:
                break
            # Undone by a concurrent request (another tab) between the two reads: look again.
        else:
            return None
        if not label.is_current:
            raise UndoRefused(
                f"undo: your last label ({label.asset.original_name}) was changed by someone else since; "
                "nothing was undone", label.pk
            )
        changed = remove_labels(taxonomy, {label.pk: label.asset_id}, user)
        # An undo counts as one more change, never as one less: if the run that learned the
        # label already finished, removing it changes what the live model was trained on; if a
        # run is in flight, it snapshotted the counter and subtracts that snapshot at the end,
        # so a decrement now would make a label saved during the run drop out of the count.
        # Counting a label and its undo as 2 (no net change when not yet learned) only brings
        # the next retrain a little sooner.
        count_changes(taxonomy, int(changed))
    return label


def request_retrain_check(taxonomy_id: int) -> bool:
    """Ask a worker to check the retrain threshold. False when the broker is unreachable."""
    from .. import tasks  # tasks import services; import here to keep the graph acyclic

    return tasks.send(tasks.check_retrain, taxonomy_id, f"retrain check for taxonomy {taxonomy_id} (left to the sweep)")
