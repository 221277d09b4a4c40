"""Bulk tagging: one operator action over many assets, stored as individual labels.

An action is one transaction: a BulkAction row plus one Label (and LabelEvent) per asset via
``labels.save_labels(..., batch=action, notify=False)`` (a few queries per 500 assets, and the
taxonomy row locked only by its last statement), then a single retrain check once committed.
Undo is per action: every label it created that is still current is removed and the asset's
previous label (if any) becomes current again, with an UNDO event each.
"""
from __future__ import annotations

import logging
from typing import Sequence

from django.db import transaction
from django.utils import timezone

from ..models import Asset, BulkAction, Label, Role, Taxonomy
from ..permissions import RANK, real_user, role_in
from . import labels

log = logging.getLogger(__name__)
MAX_ASSETS = 5000  # per action: bounds the transaction and the request


class BulkError(ValueError):
    """Bad bulk input; the message starts with the field name."""


def apply(taxonomy: Taxonomy, asset_ids: Sequence[int], user, tag_ids: Sequence[int] | None = None,
          accept: bool = False) -> BulkAction:
    """Label every asset with ``tag_ids``, or (``accept``) with its own live suggestion.
    Assets outside the taxonomy's client are refused as a whole; with ``accept``, assets that
    have no suggestion are left out (reported by the smaller ``n_labels``), and so are assets
    already labeled: a suggestion never replaces a person's label (``action.n_kept`` counts
    them). Tags the operator picked replace a single-label taxonomy's label, and are added to a
    multi-label one's (the tags an image already has stay: the page shows only the picked tag)."""
    ids = list(dict.fromkeys(int(a) for a in asset_ids))
    if not ids:
        raise BulkError("assets: select at least one image")
    if len(ids) > MAX_ASSETS:
        raise BulkError(f"assets: at most {MAX_ASSETS} per action")
    if accept == bool(tag_ids):
        raise BulkError("tags: give tags to apply, or accept the suggestions, not both")
    assets = Asset.objects.filter(client_id=taxonomy.client_id, pk__in=ids).in_bulk()
    if len(assets) != len(ids):
        raise BulkError("assets: not found")  # another client's id looks like a missing one
    if tag_ids:
        labels.validate_tags(taxonomy, tag_ids)
    suggested = suggested_tags(taxonomy, ids) if accept else {}
    kept = labeled(taxonomy, ids) if accept else set()
    items = [(assets[a], suggested.get(a) if accept else list(tag_ids)) for a in ids if a not in kept]
    action = _write(taxonomy, user, accept, [(asset, tags) for asset, tags in items if tags])  # accept: no suggestion, no label
    action.n_kept = len(kept)
    return action


def apply_each(taxonomy: Taxonomy, asset_ids: Sequence[int], user, tag_ids: Sequence[int] | None = None,
               accept: bool = False) -> tuple[BulkAction, dict[str, str]]:
    """As ``apply``, but an asset that cannot be labeled (not found, no suggestion to accept,
    a suggested tag set that is no longer valid) is skipped and reported, and the rest are
    saved: (action, {asset id: why skipped}). The API's bulk endpoint."""
    ids = list(dict.fromkeys(int(a) for a in asset_ids))
    if tag_ids:
        labels.validate_tags(taxonomy, tag_ids)  # once, before anything is written
    found = Asset.objects.filter(client_id=taxonomy.client_id, pk__in=ids).in_bulk()
    suggested = suggested_tags(taxonomy, ids) if accept else {}
    kept = labeled(taxonomy, ids) if accept else set()
    skipped: dict[str, str] = {}
    items, checked = [], {}
    for asset_id in ids:
        tags = list(tag_ids or suggested.get(asset_id) or [])
        problem = ("not found" if asset_id not in found
                   else "already labeled: a suggestion does not replace a label" if asset_id in kept
                   else "no suggestion to accept" if not tags else checked.get(tuple(tags)))
        if tags and problem is None and tuple(tags) not in checked:
            try:  # each distinct tag set once: a bad one is reported per asset, the rest are saved
                labels.validate_tags(taxonomy, tags)
                checked[tuple(tags)] = None
            except labels.LabelError as exc:
                problem = checked[tuple(tags)] = str(exc)
        if problem:
            skipped[str(asset_id)] = problem
        else:
            items.append((found[asset_id], tags))
    return _write(taxonomy, user, accept, items), skipped


def _write(taxonomy: Taxonomy, user, accept: bool, items: list[tuple[Asset, list[int]]]) -> BulkAction:
    """One transaction: the BulkAction row and its labels (one chunked write, the retrain
    counter bumped once), then, once committed, one retrain check and fresh cluster stats."""
    kind = BulkAction.Kind.ACCEPT_SUGGESTIONS if accept else BulkAction.Kind.APPLY_TAGS
    with transaction.atomic():
        action = BulkAction.objects.create(taxonomy=taxonomy, user=real_user(user), kind=kind)
        n = labels.save_labels(taxonomy, sorted(items, key=lambda it: it[0].pk), user=user, batch=action, notify=False,
                               merge=taxonomy.multilabel and not accept)
        BulkAction.objects.filter(pk=action.pk).update(n_labels=n)
        action.n_labels = n
        if n:
            ids = [asset.pk for asset, _ in items]
            transaction.on_commit(lambda: after_commit(taxonomy, ids))
    return action


def labeled(taxonomy: Taxonomy, ids: list[int]) -> set[int]:
    """Those of ``ids`` with a current label in the taxonomy."""
    return set(Label.objects.filter(taxonomy=taxonomy, is_current=True, asset_id__in=ids).values_list("asset_id", flat=True))


def stored_tags(action: BulkAction) -> dict[int, list[int]]:
    """asset id -> the tag ids its label from ``action`` holds (several in a multi-label one)."""
    out: dict[int, list[int]] = {}
    for asset_id, tag_id in Label.objects.filter(batch=action).values_list("asset_id", "tags").order_by("asset_id", "tags"):
        out.setdefault(asset_id, []).extend([tag_id] if tag_id is not None else [])
    return out


def suggested_tags(taxonomy: Taxonomy, ids: list[int]) -> dict[int, list[int]]:
    """Each asset's live suggestion, as the tag ids accepting it would save."""
    rows = labels.live_suggestions(taxonomy, ids)
    retired = labels.retired_tag_ids(taxonomy) if rows else set()
    return {a: sorted(labels.suggested_tag_ids(taxonomy, s, retired)) for a, s in rows.items()}


def after_commit(taxonomy: Taxonomy, asset_ids: list[int]) -> None:
    """Once committed: one retrain check, and cluster stats that reflect the new labels.
    Neither may fail the request: the labels are already saved."""
    labels.request_retrain_check(taxonomy.pk)
    try:
        from . import clusters

        clusters.refresh_for_assets(taxonomy.client_id, asset_ids)
    except Exception:
        log.exception("cluster stats not refreshed after a bulk action on taxonomy %s", taxonomy.pk)


def may_undo(action: BulkAction, user) -> bool:
    """The operator who did it, or an admin of the client."""
    if action.user_id is not None and action.user_id == getattr(user, "pk", None):
        return True
    role = role_in(user, action.taxonomy.client)
    return role is not None and RANK[role] >= RANK[Role.ADMIN]


def undo(action: BulkAction, user) -> list[int]:
    """Undo a whole bulk action; returns the assets whose label was removed (read under the
    lock). Assets labeled again since (their bulk label is no longer current) keep the newer
    label. Idempotent: a second call removes nothing."""
    taxonomy = action.taxonomy
    with transaction.atomic():
        locked = BulkAction.objects.select_for_update().get(pk=action.pk)
        if locked.undone is not None:
            return []
        current = list(Label.objects.select_for_update().filter(batch=locked, is_current=True)
                       .order_by("id").values_list("id", "asset_id"))
        asset_ids = [a for _, a in current]
        changed = labels.remove_labels(taxonomy, dict(current), user, source="bulk-undo")
        # Each undone label changes the training data once more (see labels.undo_last), counted
        # once for the action, as late as possible: that UPDATE holds the taxonomy row to commit.
        BulkAction.objects.filter(pk=locked.pk).update(undone=timezone.now())
        labels.count_changes(taxonomy, changed)
        transaction.on_commit(lambda: after_commit(taxonomy, asset_ids))
    action.refresh_from_db()
    return asset_ids
