"""The review queue: unlabeled assets, most uncertain (or most confident) first, or a random
sample for the audit (services.audit).

With a live model the queue is an index scan over Suggestion rows (partial index on
unlabeled rows by uncertainty). Without one, assets come in content-hash order.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Sequence

from django.db import models
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone

from ..models import Asset, Label, Lease, Suggestion, Taxonomy, TrainingRun
from .audit import record_draws
from .suggesting import as_shown, ranked_tags


class Order(models.TextChoices):
    UNCERTAIN = "uncertain", "Most uncertain"
    CONFIDENT = "confident", "Most confident"
    AUDIT = "audit", "Random sample (audit)"


# "uncertain": the planned diverse pages of the live model first (suggesting.plan_queue), then
# the least sure; "confident" is for fast accept runs and ignores the plan. "audit": what the
# live model scored, by content hash: independent of the model and of what a photo shows, so
# the first ones are a uniform random sample of the unlabeled library (services.audit). It
# walks the (client, sha256) index, probing each asset's suggestion of the live version.
ORDERS = {
    Order.UNCERTAIN.value: ("queue_rank", "-uncertainty", "id"),
    Order.CONFIDENT.value: ("uncertainty", "id"),
    Order.AUDIT.value: ("asset__sha256",),
}
BAD_ORDER = "must be one of " + ", ".join(ORDERS)
MAX_BATCH = 50
# How long an asset shown to one operator stays out of the others' queues unless renewed. An
# open review page renews what it holds with every status poll (renew_leases), so this only
# bounds how long a closed tab (or a crashed browser) keeps its assets from the others.
LEASE_SECONDS = 120
LEASE_ROUNDS = 20


def asset_urls(asset_id: int) -> dict[str, str]:
    return {
        "image": reverse("asset_image", args=[asset_id]),
        "thumb": reverse("asset_thumb", args=[asset_id]),
    }


def review_batch(
    taxonomy: Taxonomy,
    order: str = "uncertain",
    limit: int = 10,
    exclude: Sequence[int] = (),
    user=None,
    skipped: Sequence[int] = (),
) -> list[dict]:
    """Next assets to review, each with its suggestion (tags sorted by probability), leaving out
    ``exclude`` (what the caller still holds) and ``skipped`` (what the operator passed on).

    With ``user``, assets leased by other operators are left out and the returned ones are
    leased to ``user`` for LEASE_SECONDS, so two operators are not shown the same asset. The
    user's leases on ``exclude`` are renewed too: the review page holds a few items ahead and
    may show one minutes after it was fetched. ``skipped`` ones are not renewed, so a colleague
    gets them once their lease runs out. In the audit order a lease records that the asset was
    served for the audit (Lease.audit), which is what lets its label count as an audit label, and
    each served asset is recorded as drawn for the live version (AuditDraw), answered or not.
    Audit items are blind: sent without the suggestion (services.audit).
    """
    if order not in ORDERS:
        raise ValueError(f"order: {BAD_ORDER}")
    limit = max(1, min(int(limit), MAX_BATCH))
    if user is None or not user.is_authenticated:
        return _batch(taxonomy, order, limit, [*exclude, *skipped], user=None)
    now = timezone.now()
    Lease.objects.filter(taxonomy=taxonomy, expires__lte=now).delete()
    renew_leases(taxonomy, user, exclude, now=now)
    items: list[dict] = []
    skip = [*exclude, *skipped]
    # Another operator may claim a candidate between our read and our insert; ask again past
    # what was lost. An empty answer must mean "nothing left", never "you lost a race", so
    # only a run of lost rounds this long (many operators on few assets) gives up early.
    for _ in range(LEASE_ROUNDS):
        candidates = _batch(taxonomy, order, limit - len(items), skip, user=user, now=now)
        if not candidates:
            break
        ids = [i["asset"] for i in candidates]
        expires = now + timedelta(seconds=LEASE_SECONDS)
        Lease.objects.filter(taxonomy=taxonomy, user=user, asset_id__in=ids).update(expires=expires)
        Lease.objects.bulk_create(
            [Lease(taxonomy=taxonomy, asset_id=a, user=user, expires=expires) for a in ids], ignore_conflicts=True)
        mine = set(Lease.objects.filter(taxonomy=taxonomy, user=user, asset_id__in=ids).values_list("asset_id", flat=True))
        if order == Order.AUDIT:
            _served_for_audit(taxonomy, user, mine)
        items += [i for i in candidates if i["asset"] in mine]
        skip += ids
        if len(items) >= limit or (items and len(mine) == len(ids)):
            break
    return items


def _served_for_audit(taxonomy: Taxonomy, user, asset_ids: set[int]) -> None:
    """Mark ``user``'s leases on ``asset_ids`` as served for the audit and record the draws.
    After the leases are made, never before: an overlapping fetch of this user in another order
    (``o`` pressed twice) could otherwise insert its lease, not an audit one, between the two.
    Another order's fetch never clears the flag, so no interleaving loses it."""
    if not asset_ids:
        return
    Lease.objects.filter(taxonomy=taxonomy, user=user, asset_id__in=list(asset_ids)).update(audit=True)
    record_draws(taxonomy, user, asset_ids)


def renew_leases(taxonomy: Taxonomy, user, asset_ids: Sequence[int], now=None) -> int:
    """Extend ``user``'s leases on ``asset_ids`` by LEASE_SECONDS; returns how many.

    The open review page calls this (through its status poll, and refill) for what it holds, so
    an operator who looks at one image for minutes keeps the ones buffered behind it; a closed
    tab stops asking and its leases lapse. Only rows that still name the user are touched, never
    another operator's: a lease that lapsed and was taken by a colleague is theirs now, and the
    page's save of that asset gets a conflict (base_label) rather than this taking it back. A
    lapsed row that still names the user was served to nobody else since (every operator's
    fetch deletes lapsed leases before serving), so renewing it takes nothing from anyone.
    One UPDATE, no read: every open review tab polls. Leases are only made for the taxonomy's
    own client's assets (review_batch, item_for), so the taxonomy filter keeps other ids out.
    """
    if not asset_ids:
        return 0
    now = now or timezone.now()
    return Lease.objects.filter(taxonomy=taxonomy, user=user, asset_id__in=list(asset_ids)).update(
        expires=now + timedelta(seconds=LEASE_SECONDS)
    )


def _leased_by_others(taxonomy: Taxonomy, user, now, ref: str) -> Exists:
    return Exists(
        Lease.objects.filter(taxonomy=taxonomy, asset_id=OuterRef(ref), expires__gt=now).exclude(user=user)
    )


def _batch(
    taxonomy: Taxonomy, order: str, limit: int, exclude: Sequence[int], user=None, now=None
) -> list[dict]:
    tags = {t.pk: t for t in taxonomy.tags.all()}
    items: list[dict] = []
    audit = order == Order.AUDIT
    if taxonomy.live_model_id:
        rows = Suggestion.objects.filter(model_version_id=taxonomy.live_model_id, is_labeled=False)
        if audit:  # the client's sha256 index gives the order (ORDERS)
            rows = rows.filter(asset__client_id=taxonomy.client_id)
        if user is not None:
            rows = rows.exclude(_leased_by_others(taxonomy, user, now, "asset_id"))
        rows = (
            rows.exclude(asset_id__in=list(exclude))
            .select_related("asset", "model_version")
            .order_by(*ORDERS[order])[:limit]
        )
        items += [_suggestion_item(taxonomy, s, tags, audit=audit) for s in rows]
    if len(items) < limit and not audit:  # the audit checks the live model's suggestions: no model, nothing to audit
        # Assets the live model has not scored yet (new imports) or no model at all.
        seen = [i["asset"] for i in items] + list(exclude)
        labeled = Label.objects.filter(asset=OuterRef("pk"), taxonomy=taxonomy, is_current=True)
        scored = Suggestion.objects.filter(asset=OuterRef("pk"), model_version_id=taxonomy.live_model_id)
        rest = Asset.objects.filter(client_id=taxonomy.client_id)
        if user is not None:
            rest = rest.exclude(_leased_by_others(taxonomy, user, now, "pk"))
        rest = (
            rest.exclude(pk__in=seen)
            .exclude(Exists(labeled))
            .exclude(Exists(scored))
            # By content hash, i.e. an even spread over the library: in import order a new
            # taxonomy's first labels would all come from the first folder (often one brand),
            # and a first retrain on labels of one tag is refused. The (client, sha256) index.
            .order_by("sha256")[: limit - len(items)]
        )
        items += [_item(a, [], uncertainty=None, suggested=[]) for a in rest]
    return items


def item_for(taxonomy: Taxonomy, asset: Asset, user, audit: bool = False) -> dict:
    """One asset as a queue item (with the live model's suggestion when there is one), leased
    to ``user``: what an undo puts back at the front of the operator's queue. ``audit``: the
    undone label was this user's audit label, so the asset stays served to them for the audit
    (drawn for the live version, and blind like every audit item)."""
    s = (Suggestion.objects.filter(model_version_id=taxonomy.live_model_id, asset=asset)
         .select_related("asset", "model_version").first()) if taxonomy.live_model_id else None
    tags = {t.pk: t for t in taxonomy.tags.all()}
    expires = timezone.now() + timedelta(seconds=LEASE_SECONDS)
    # one lease per asset: the operator who undid the label takes it over (a labeled asset is
    # in nobody's queue, so any other lease on it is a stale one)
    audit = audit and s is not None
    Lease.objects.update_or_create(taxonomy=taxonomy, asset=asset,
                                   defaults={"user": user, "expires": expires, "audit": audit})
    if audit:
        record_draws(taxonomy, user, [asset.pk])
    item = _suggestion_item(taxonomy, s, tags, audit=audit) if s else _item(asset, [], uncertainty=None, suggested=[])
    item["label"] = Label.objects.filter(asset=asset, taxonomy=taxonomy, is_current=True).values_list(
        "pk", flat=True).first()
    return item


def _suggestion_item(taxonomy: Taxonomy, s: Suggestion, tags: dict, audit: bool = False) -> dict:
    if audit:
        # Blind: the operator answers without the model's suggestion, its probabilities or its
        # uncertainty (agreeing with a proposal is not the same as being right: anchoring).
        # The label is still compared with the live suggestion when saved (labels._write).
        return _item(s.asset, [], uncertainty=None, suggested=[], audit=True)
    s, suggested = as_shown(taxonomy, s, tags)  # a tag retired since the row was written left out
    return _item(s.asset, ranked_tags(s.model_version.tag_ids, s.probs, tags), uncertainty=s.uncertainty,
                 suggested=suggested, audit=audit)


def _item(asset: Asset, ranked: list[dict], uncertainty: float | None, suggested: list[int],
          audit: bool = False) -> dict:
    return {
        "asset": asset.pk,
        # The current label the page saw (None: unlabeled), sent back as base_label so a label
        # given meanwhile by someone else is a conflict, not silently overwritten. The queue
        # serves unlabeled assets; an undo's item_for fills in a restored label.
        "label": None,
        "name": asset.original_name,
        "width": asset.width,
        "height": asset.height,
        "uncertainty": None if uncertainty is None else round(float(uncertainty), 4),
        "suggested": suggested,
        "tags": ranked,
        # served in the audit order, blind (no suggestion): the page sends audit=true with its
        # label (services.audit)
        "audit": audit,
        **asset_urls(asset.pk),
    }


def queue_status(taxonomy: Taxonomy) -> dict:
    """What the operator sees in the header: live model, labels until the next retrain."""
    taxonomy.refresh_from_db(fields=["labels_since_train", "live_model", "retrain_threshold"])
    live = taxonomy.live_model
    run = TrainingRun.objects.filter(taxonomy=taxonomy).order_by("-id").first()
    # Two index-only counts (one current label per asset and taxonomy is a constraint), not an
    # anti-join: every open review tab polls this, and at 1M assets the anti-join took 0.5 s
    # against ~0.08 s (bench/paging.py).
    unlabeled = (
        Asset.objects.filter(client_id=taxonomy.client_id).count()
        - Label.objects.filter(taxonomy=taxonomy, is_current=True).count()
    )
    metrics = (live.metrics or {}) if live else {}
    return {
        "live_version": live.version if live else None,
        "live_accuracy": metrics.get("accuracy"),
        # the held-out score the header shows: accuracy, or micro-F1 for a multi-label model
        "live_score": metrics.get("micro_f1") if taxonomy.multilabel else metrics.get("accuracy"),
        "live_score_name": "micro-F1" if taxonomy.multilabel else "acc.",
        "labels_since_train": taxonomy.labels_since_train,
        "retrain_threshold": taxonomy.retrain_threshold,
        "labels_until_retrain": max(0, taxonomy.retrain_threshold - taxonomy.labels_since_train),
        "unlabeled": unlabeled,
        "run": None
        if run is None
        else {"id": run.pk, "state": run.state, "progress": run.progress, "message": _run_message(run)},
    }


def _run_message(run: TrainingRun) -> str:
    """A failed run's reason (its error's first line: a refusal's words, or the exception),
    not the step it was at; otherwise the step."""
    if run.state == TrainingRun.State.FAILED and run.error:
        return run.error.splitlines()[0][:300]
    return run.message
