"""The random audit: how often the live model's suggestions are right on the images nobody labeled.

The held-out labels every version is scored on are the review queue's picks, the images the
model was least sure of, so their accuracy understates the suggestions on the rest of the
library. The queue's "audit" order (services.queue) serves the unlabeled images the live model
scored by content hash: sha256 says nothing about what a photo shows nor about the model, so
the first images of that order are a uniform random sample of the unlabeled library.

Blind: audit items are sent without the suggestion, its probabilities or the uncertainty, so
the operator answers what the image shows rather than whether a proposal looks plausible
(anchoring would measure agreement, not accuracy). When the label is saved the server compares
its tags with the live suggestion (``Label.source`` accepted vs corrected, decided by
``labels.suggested_tag_ids``: the tag, or in a multi-label taxonomy exactly the set of tags).

What is counted, per model version:
* drawn: the images the queue served in the audit order while the version was live
  (``AuditDraw``, written by the server when it serves them, whoever drew them first);
* answered ("audited"): audit labels of the version (``Label.audit``: rule below), current or
  not, so a later re-save of the image (a second look, a colleague's fix, a bulk relabel) does
  not take the answer back; an undone one is deleted, and its image is unanswered again;
* right: answered ones whose tags were exactly the suggested ones.
The estimate is right / answered with a Wilson 95 % interval. Drawn images left unanswered
(skipped, their lease lapsed, or labeled later in another order) are non-response, and may be
the hard ones: a client that skips them, or walks the order through ``exclude`` and answers
only the easy ones, gets a flattering rate. So the estimate also carries worst-case bounds
(Manski): from the Wilson lower bound of right / drawn (every unanswered one wrong) to the
Wilson upper bound of (right + unanswered) / drawn (every one right). What is prevented: a
label of an image the queue did not serve in the audit order never counts; what is not:
choosing which served images to answer, which only the bounds show. Blindness is against
anchoring, not a security boundary: the same user can see a suggestion in the other orders
and pages. Audit labels train like any other.
"""
from __future__ import annotations

from typing import Collection, Iterable, TypedDict

from django.db.models import Count

from ml.metrics import wilson_ci

from ..models import AuditDraw, Lease, Taxonomy
from ..permissions import real_user

# Below this many audited images the interval is too wide to be worth a headline: the dashboard
# asks for more instead (Wilson at 10 spans about ±25 points around 70 %).
MIN_AUDITED = 10


class VersionAudit(TypedDict):
    version: int
    drawn: int  # images the queue served in the audit order while this version was live
    audited: int  # audit labels that answered this version's suggestion (current or not)
    unanswered: int  # drawn - audited: skipped, lapsed or labeled in another order
    right: int  # audited ones whose tags were exactly the suggested ones
    rate: float | None  # right / audited (None: none answered)
    ci95: list[float] | None  # its Wilson interval
    bounds95: list[float]  # whatever the unanswered are: Wilson low of right/drawn, high of (right+unanswered)/drawn


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
    This proves the image was served in the audit order, not that every served image was
    answered: the draws (AuditDraw) count the others, as the estimate's non-response.
    """
    user = real_user(user)
    if user is None or not asset_ids:
        return set()
    return set(Lease.objects.filter(taxonomy=taxonomy, user=user, audit=True, asset_id__in=list(asset_ids))
               .values_list("asset_id", flat=True))


def record_draws(taxonomy: Taxonomy, user, asset_ids: Iterable[int], model_version_id: int | None = None) -> None:
    """Record ``asset_ids`` as drawn for the audit of ``model_version_id`` (default: the live
    version): one AuditDraw per asset and version, the first to draw it keeps it."""
    version = model_version_id or taxonomy.live_model_id
    rows = [AuditDraw(taxonomy=taxonomy, asset_id=a, model_version_id=version, user=real_user(user))
            for a in sorted(set(asset_ids))]
    if version and rows:
        AuditDraw.objects.bulk_create(rows, ignore_conflicts=True)


def version_audit(version: int, drawn: int, audited: int, right: int) -> VersionAudit:
    """One version's estimate from its counts (module docstring)."""
    drawn = max(drawn, audited)  # every audit label records its draw (labels._write; older ones: migration 0015)
    unanswered = drawn - audited
    low, high = wilson_ci(right, drawn)[0], wilson_ci(right + unanswered, drawn)[1]
    return {"version": version, "drawn": drawn, "audited": audited, "unanswered": unanswered, "right": right,
            "rate": round(right / audited, 4) if audited else None,
            "ci95": [round(x, 4) for x in wilson_ci(right, audited)] if audited else None,
            "bounds95": [round(low, 4), round(high, 4)]}


def by_version(taxonomy: Taxonomy) -> dict[int, VersionAudit]:
    """{version number: its audit}, for the versions that have audit draws or labels."""
    from .dashboard import agreement  # the dashboard shows this module's estimate: import here

    answered = {v["version"]: v for v in agreement(taxonomy, audit_only=True)["by_version"]}
    drawn = dict(AuditDraw.objects.filter(taxonomy=taxonomy).values("model_version__version")
                 .annotate(n=Count("id")).values_list("model_version__version", "n"))
    out: dict[int, VersionAudit] = {}
    for k in sorted(drawn.keys() | answered.keys()):
        v = answered.get(k, {"accepted": 0, "corrected": 0})
        out[k] = version_audit(k, drawn.get(k, 0), v["accepted"] + v["corrected"], v["accepted"])
    return out


def estimate(taxonomy: Taxonomy) -> dict:
    """The dashboard's audit card: the live version's estimate (``live``, None without a live
    model), how many more audited images it needs before it is shown (``needed``), and every
    version's (``by_version``, oldest first). ``audited``: the live version's answered draws."""
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
