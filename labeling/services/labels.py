"""Saving, undoing and importing labels.

Every label commit bumps the taxonomy's retrain counter in the same transaction and, once
committed, asks Celery to check whether a retrain is due. If the broker is down the label
is still saved; the periodic sweep (labeling.tasks.sweep) finds the due retrain later.
"""
from __future__ import annotations

import logging
from typing import Collection, Iterable, Sequence

from django.db import IntegrityError, transaction
from django.db.models import F

from ..models import Asset, BulkAction, Label, LabelEvent, Suggestion, Tag, Taxonomy
from ..permissions import real_user

log = logging.getLogger(__name__)


class LabelError(ValueError):
    """Bad label input; the message names the field."""


class LabelConflict(LabelError):
    """The asset's current label is no longer the one the writer saw (``base_label``), so the
    write was refused rather than silently replacing someone else's work. Nothing was saved."""

    def __init__(self, current: "Label | None") -> None:
        super().__init__("base_label: the asset's label changed since it was loaded")
        self.current = current


# save_label(base_label=NO_CHECK): last write wins (the review page, imports). Any other value,
# None included ("it was unlabeled"), must equal the current label's id or LabelConflict is raised.
NO_CHECK = object()
# A writer that loses the race for the first label of an asset retries this often (no check).
WRITE_ATTEMPTS = 3


def validate_tags(taxonomy: Taxonomy, tag_ids: Sequence[int]) -> list[Tag]:
    if not tag_ids:
        raise LabelError("tags: pick at least one tag")
    ids = list(dict.fromkeys(int(t) for t in tag_ids))
    tags = list(Tag.objects.filter(taxonomy=taxonomy, pk__in=ids, retired=False))
    if len(tags) != len(ids):
        raise LabelError("tags: unknown or retired tag for this taxonomy")
    if not taxonomy.multilabel and len(tags) > 1:
        raise LabelError("tags: this taxonomy takes exactly one tag per asset")
    return tags


def live_suggestion(taxonomy: Taxonomy, asset: Asset) -> Suggestion | None:
    if taxonomy.live_model_id is None:
        return None
    return Suggestion.objects.filter(asset=asset, model_version_id=taxonomy.live_model_id).first()


def retired_tag_ids(taxonomy: Taxonomy) -> set[int]:
    return set(taxonomy.tags.filter(retired=True).values_list("pk", flat=True))


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


def _source_for(taxonomy: Taxonomy, tags: list[Tag], suggestion: Suggestion | None) -> str:
    if suggestion is None:
        return Label.Source.MANUAL
    if {t.pk for t in tags} == suggested_tag_ids(taxonomy, suggestion):
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
) -> Label:
    """Store the asset's current label (older ones stay as history) and count it toward a retrain.

    ``notify=False`` leaves the retrain check to the caller (bulk saves send one, not one each).
    ``base_label``: the current label id the writer saw (None: unlabeled); LabelConflict when
    it changed meanwhile. Left out, the write replaces whatever is current.
    """
    if asset.client_id != taxonomy.client_id:
        raise LabelError("asset: not in this taxonomy's client")
    tags = validate_tags(taxonomy, tag_ids)
    suggestion = live_suggestion(taxonomy, asset)
    user = real_user(user)
    with transaction.atomic():
        for attempt in range(WRITE_ATTEMPTS):
            previous = current_label(taxonomy, asset, for_update=True)
            if base_label is not NO_CHECK and (previous.pk if previous else None) != base_label:
                # Re-read: under READ COMMITTED a label committed during our lock wait is only
                # visible to a new statement, and that is the one the writer must be shown.
                raise LabelConflict(current_label(taxonomy, asset))
            try:
                # A savepoint, so losing the race below leaves the caller's transaction usable.
                with transaction.atomic():
                    if previous is not None:
                        Label.objects.filter(pk=previous.pk).update(is_current=False)
                    label = Label.objects.create(
                        asset=asset,
                        taxonomy=taxonomy,
                        user=user,
                        source=source or _source_for(taxonomy, tags, suggestion),
                        suggestion=suggestion,
                        batch=batch,
                    )
                break
            except IntegrityError:
                # Another writer's first label of this asset became current after our read
                # (one_current_label): with a check that is a conflict, without one read again.
                if base_label is not NO_CHECK or attempt == WRITE_ATTEMPTS - 1:
                    raise LabelConflict(current_label(taxonomy, asset)) from None
        label.tags.set(tags)
        LabelEvent.objects.create(
            taxonomy=taxonomy, asset=asset, user=user, action=LabelEvent.Action.SET, label=label,
            before=tag_ids_of(previous), after=sorted(t.pk for t in tags), source=label.source,
        )
        Suggestion.objects.filter(asset=asset, taxonomy=taxonomy).update(is_labeled=True)
        Taxonomy.objects.filter(pk=taxonomy.pk).update(labels_since_train=F("labels_since_train") + 1)
        if notify:
            transaction.on_commit(lambda: request_retrain_check(taxonomy.pk))
    return label


def current_label(taxonomy: Taxonomy, asset: Asset, for_update: bool = False) -> Label | None:
    qs = Label.objects.filter(asset=asset, taxonomy=taxonomy, is_current=True)
    return (qs.select_for_update() if for_update else qs).first()


def tag_ids_of(label: Label | None) -> list[int] | None:
    return None if label is None else sorted(label.tags.values_list("id", flat=True))


def bulk_label(taxonomy: Taxonomy, items: Iterable[tuple[Asset, list[int]]], user=None, source: str | None = None) -> int:
    """Label many assets in one transaction (used by imports with folder labels)."""
    n = 0
    with transaction.atomic():
        for asset, tag_ids in items:
            save_label(taxonomy, asset, tag_ids, user=user, source=source, notify=False)
            n += 1
        if n:
            transaction.on_commit(lambda: request_retrain_check(taxonomy.pk))
    return n


def remove_label(label: Label, user=None, source: str = "") -> Label | None:
    """Delete a current label, make the one before it current again (or put the asset back
    in the queue) and record the undo. Call inside a transaction; returns the restored label."""
    taxonomy, asset = label.taxonomy, label.asset
    undone_tags = tag_ids_of(label)
    label.delete()
    previous = Label.objects.filter(asset=asset, taxonomy=taxonomy).order_by("-id").first()
    if previous is not None:
        Label.objects.filter(pk=previous.pk).update(is_current=True)
    else:
        Suggestion.objects.filter(asset=asset, taxonomy=taxonomy).update(is_labeled=False)
    LabelEvent.objects.create(
        taxonomy=taxonomy, asset=asset, user=real_user(user),
        action=LabelEvent.Action.UNDO, label=previous, before=undone_tags, after=tag_ids_of(previous),
        source=source,
    )
    return previous


def undo_last(taxonomy: Taxonomy, user) -> Label | None:
    """Remove this user's most recent label in the taxonomy and restore the one before it."""
    with transaction.atomic():
        label = (
            Label.objects.select_for_update()
            .filter(taxonomy=taxonomy, user=user, is_current=True)
            .order_by("-id")
            .first()
        )
        if label is None:
            return None
        remove_label(label, user)
        # The undone label no longer counts toward the next retrain (never below zero).
        Taxonomy.objects.filter(pk=taxonomy.pk, labels_since_train__gt=0).update(
            labels_since_train=F("labels_since_train") - 1
        )
    return label


def request_retrain_check(taxonomy_id: int) -> bool:
    """Ask a worker to check the retrain threshold. False when the broker is unreachable."""
    from .. import tasks  # tasks import services; import here to keep the graph acyclic

    try:
        tasks.check_retrain.apply_async((taxonomy_id,), retry=False)
        return True
    except Exception as exc:  # kombu raises several types for an unreachable broker
        log.warning("broker unreachable, retrain check for taxonomy %s left to the sweep: %s", taxonomy_id, exc)
        return False
