"""The random audit: how often the live model's suggestions are right on the images nobody labeled.

The held-out labels every version is scored on are the review queue's picks, the images the
model was least sure of, so their accuracy understates the suggestions on the rest of the
library. The queue's "audit" order (services.queue) serves the unlabeled images the live model
scored by content hash: sha256 says nothing about what a photo shows nor about the model, so
the first images of that order are a uniform random sample of the unlabeled library. Labels
given to them are marked ``Label.audit``, and the share of them where the operator kept the
suggestion (the tag, or in a multi-label taxonomy exactly the set of tags, the page proposed:
``Label.source`` accepted vs corrected, decided by ``labels.suggested_tag_ids`` when saved) is
the estimate, per model version, with a Wilson 95 % interval. Audit labels train like any other.
"""
from __future__ import annotations

from typing import Collection, TypedDict

from ml.metrics import wilson_ci

from ..models import Lease, Taxonomy
from ..permissions import real_user

# Below this many audited images the interval is too wide to be worth a headline: the dashboard
# asks for more instead (Wilson at 10 spans about ±25 points around 70 %).
MIN_AUDITED = 10


class VersionAudit(TypedDict):
    version: int
    audited: int  # audit labels that answered this version's suggestion
    right: int  # ... of them where the operator kept the suggested tags
    rate: float
    ci95: list[float]


def served_for_audit(taxonomy: Taxonomy, user, asset_ids: Collection[int]) -> set[int]:
    """Which of ``asset_ids`` the queue served to ``user`` in its audit order.

    The rule for ``Label.audit`` (labels._write applies it): a label asked to be an audit label
    is one only when (1) this lease says the queue handed the asset to this user in the audit
    order, (2) the asset had no current label (the audit samples the unlabeled library) and
    (3) the live model scored it (its suggestion is what is being checked). The client's flag
    alone is never enough: a buggy or malicious client could otherwise mark images it picked
    itself, say the easy ones, as "random" and inflate the estimate. The lease is written by the
    server when it serves the asset (queue.review_batch), so a label can only be an audit label
    of an image the sha256 order chose. A lapsed lease row that still names the user counts:
    every fetch deletes lapsed leases before serving, so nobody else was given the image since.
    """
    user = real_user(user)
    if user is None or not asset_ids:
        return set()
    return set(Lease.objects.filter(taxonomy=taxonomy, user=user, audit=True, asset_id__in=list(asset_ids))
               .values_list("asset_id", flat=True))


def by_version(taxonomy: Taxonomy) -> dict[int, VersionAudit]:
    """{version number: its audit}, for the versions that have audit labels."""
    from .dashboard import agreement  # the dashboard shows this module's estimate: import here

    out: dict[int, VersionAudit] = {}
    for v in agreement(taxonomy, audit_only=True)["by_version"]:
        n = v["accepted"] + v["corrected"]
        out[v["version"]] = {"version": v["version"], "audited": n, "right": v["accepted"], "rate": v["rate"],
                             "ci95": [round(x, 4) for x in wilson_ci(v["accepted"], n)]}
    return out


def estimate(taxonomy: Taxonomy) -> dict:
    """The dashboard's audit card: the live version's estimate (``live``, None without a live
    model), how many more audited images it needs before it is shown (``needed``), and every
    version's (``by_version``, oldest first)."""
    versions = by_version(taxonomy)
    live = taxonomy.live_model
    live_audit = versions.get(live.version) if live else None
    audited = live_audit["audited"] if live_audit else 0
    return {
        "live_version": live.version if live else None,
        "live": live_audit,
        "audited": audited,
        "needed": max(0, MIN_AUDITED - audited) if live else None,
        "min_audited": MIN_AUDITED,
        "by_version": [versions[k] for k in sorted(versions)],
    }
