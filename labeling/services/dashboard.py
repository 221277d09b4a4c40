"""What a taxonomy's dashboard shows, as plain data (the page plots it with plotly.js).

Counts are aggregated in the database; only the model metrics (small JSON per version) and a
bounded scan for the misclassification gallery are handled in Python.

Single- and multi-label models store different metrics (ml.metrics.classification_metrics vs
multilabel_metrics): accuracy, a confusion matrix and "per_class", or micro/macro-F1, subset
accuracy, "per_tag" and the tuned per-tag "thresholds". ``build`` says which kind it is, and
each reader below picks the keys of that kind.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Callable

from django.db.models import Count, Exists, OuterRef
from django.db.models.functions import TruncDate
from django.urls import reverse
from django.utils import timezone

from ml.metrics import macro_f1_ci, wilson_ci

from ..models import Asset, ImportJob, JobState, Label, LabelEvent, ModelVersion, Suggestion, Taxonomy, TrainingRun
from . import audit
from . import labels as label_service
from .training import ROLLBACK
from .training_data import may_hold_out

DAYS = 90  # labels-over-time window
GALLERY = 24  # misclassified held-out images shown
GALLERY_SCAN = 20_000  # labeled assets looked at to find them: bounded on a huge library
RECENT_VERSIONS = 10  # rows of the "why each version went live or not" table


def build(taxonomy: Taxonomy) -> dict:
    return {
        "multilabel": taxonomy.multilabel,  # which metrics the plots read (module docstring)
        "coverage": coverage(taxonomy),
        "over_time": labels_over_time(taxonomy),
        "by_operator": by_operator(taxonomy),
        "agreement": agreement(taxonomy),
        "audit": audit.estimate(taxonomy),  # the live model on a random sample of the unlabeled library
        "versions": versions(taxonomy),
        "live": live_report(taxonomy),
        "gallery": gallery(taxonomy),
    }


def coverage(taxonomy: Taxonomy) -> dict:
    n_assets = Asset.objects.filter(client_id=taxonomy.client_id).count()
    current = Label.objects.filter(taxonomy=taxonomy, is_current=True)
    n_labeled = current.count()
    per_tag = (
        current.values("tags__id").annotate(n=Count("id")).order_by("-n")
    )
    names = _tag_paths(taxonomy)
    return {
        "assets": n_assets,
        "labeled": n_labeled,
        "pct": round(100 * n_labeled / n_assets, 1) if n_assets else 0.0,
        # a multi-label "no tag applies" label has no tag row: shown as a bar of its own
        "per_tag": [{"tag": names.get(r["tags__id"], "?") if r["tags__id"] else "(no tag applies)", "n": r["n"]}
                    for r in per_tag if r["tags__id"] or taxonomy.multilabel],
    }


def labels_over_time(taxonomy: Taxonomy) -> dict:
    since = timezone.now() - timedelta(days=DAYS)
    rows = (
        LabelEvent.objects.filter(taxonomy=taxonomy, action=LabelEvent.Action.SET, created__gte=since)
        .annotate(day=TruncDate("created"))
        .values("day", "user__username")
        .annotate(n=Count("id"))
        .order_by("day")
    )
    days = sorted({r["day"] for r in rows})
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[int]] = {}
    for r in rows:
        who = r["user__username"] or "import / system"
        series.setdefault(who, [0] * len(days))[index[r["day"]]] += r["n"]
    return {"days": [d.isoformat() for d in days], "series": series}


def by_operator(taxonomy: Taxonomy) -> list[dict]:
    rows = (
        Label.objects.filter(taxonomy=taxonomy, is_current=True)
        .values("user__username", "source")
        .annotate(n=Count("id"))
    )
    out: dict[str, dict] = {}
    for r in rows:
        who = r["user__username"] or "import / system"
        out.setdefault(who, {"user": who, "total": 0})
        out[who][r["source"]] = r["n"]
        out[who]["total"] += r["n"]
    return sorted(out.values(), key=lambda r: -r["total"])


def agreement(taxonomy: Taxonomy, audit_only: bool = False) -> dict:
    """How often operators kept the model's suggestion, overall and per model version (the
    version a label records, which outlives its pruned suggestion rows). ``audit_only``: the
    answers of the random sample (services.audit), current or not: a later re-save of an audited
    image (a second look, a colleague's fix) must not take its answer out of the sample."""
    rows = (
        Label.objects.filter(taxonomy=taxonomy, model_version__isnull=False,
                             source__in=[Label.Source.ACCEPTED, Label.Source.CORRECTED],
                             **({"audit": True} if audit_only else {"is_current": True}))
        .values("model_version__version", "source")
        .annotate(n=Count("id"))
    )
    per: dict[int, dict] = {}
    for r in rows:
        v = per.setdefault(r["model_version__version"], {"accepted": 0, "corrected": 0})
        v[r["source"]] += r["n"]
    by_version = [
        {"version": k, **v, "rate": round(v["accepted"] / (v["accepted"] + v["corrected"]), 4)}
        for k, v in sorted(per.items())
    ]
    accepted = sum(v["accepted"] for v in per.values())
    total = accepted + sum(v["corrected"] for v in per.values())
    return {"accepted": accepted, "reviewed": total, "rate": round(accepted / total, 4) if total else None,
            "by_version": by_version}


def _macro_f1_ci(m: dict) -> list[float] | None:
    # stored with the metrics since the bootstrap moved to ml.metrics (25 ms a version with
    # 28 tags); versions evaluated before that are resampled here
    ci = m.get("macro_f1_ci95") or (macro_f1_ci(m["confusion"]) if m.get("confusion") else None)
    return [round(float(x), 4) for x in ci] if ci else None


def versions(taxonomy: Taxonomy) -> list[dict]:
    # A version went live through its own run (a rejected one is kept for the record) or a
    # rollback's; the newest rollback of each says who made it live by hand.
    went_live, made_live = set(), {}
    for mv_id, trigger, message in TrainingRun.objects.filter(
            taxonomy=taxonomy, model_version__isnull=False, state=TrainingRun.State.PROMOTED) \
            .order_by("id").values_list("model_version_id", "trigger", "message"):
        went_live.add(mv_id)
        if trigger == ROLLBACK:
            made_live[mv_id] = message
    out = []
    for mv in ModelVersion.objects.filter(taxonomy=taxonomy).order_by("version"):
        m = mv.metrics or {}
        out.append({
            "id": mv.pk,
            "version": mv.version,
            "live": mv.pk == taxonomy.live_model_id,
            "went_live": mv.pk in went_live,
            "made_live": made_live.get(mv.pk, ""),
            "created": mv.created.isoformat(),
            "n_labels": mv.n_labels,
            "n_train": m.get("n_train"),
            "n_holdout": m.get("n_holdout", 0),
            "accuracy": m.get("accuracy"),
            "accuracy_ci95": m.get("accuracy_ci95"),
            "top3_accuracy": m.get("top3_accuracy"),
            "top3_ci95": m.get("top3_ci95"),
            "macro_f1": m.get("macro_f1"),
            "macro_f1_ci95": _macro_f1_ci(m),
            "decision": m.get("decision", ""),
            "accuracy_without_matching": (m.get("local") or {}).get("score_without"),
            "matching_weight": (m.get("local") or {}).get("weight"),
            **(_multilabel_scores(m) if taxonomy.multilabel else {}),
        })
    return out


def _multilabel_scores(m: dict) -> dict:
    """A multi-label version's held-out scores. micro-F1 is the one promotion compares
    (services.evaluation.score). Subset accuracy is a share of held-out images, so it gets a
    Wilson interval like single-label accuracy; the F1s get none: the per-image decisions a
    bootstrap would resample are not stored."""
    n, subset = m.get("n") or 0, m.get("subset_accuracy")
    return {
        "micro_f1": m.get("micro_f1"),
        "subset_accuracy": subset,
        "subset_accuracy_ci95": list(wilson_ci(round(subset * n), n)) if subset is not None and n else None,
        "hamming_loss": m.get("hamming_loss"),
        "macro_f1_tags": m.get("macro_f1_tags"),
    }


def live_report(taxonomy: Taxonomy) -> dict | None:
    live = taxonomy.live_model
    if live is None:
        return None
    m = live.metrics or {}
    if taxonomy.multilabel:
        per_class = _per_tag_with_thresholds(taxonomy, live)
    else:
        predicted = [sum(col) for col in zip(*m["confusion"])] if m.get("confusion") else None  # metrics before "predicted"
        per_class = [{"tag": name, **_evidence(vals, predicted[i] if predicted else None)}
                     for i, (name, vals) in enumerate((m.get("per_class") or {}).items())]
    report = {"version": live.version, "labels": m.get("labels") or [], "confusion": m.get("confusion") or [],
              "per_class": per_class, "n_holdout": m.get("n_holdout", 0), "savings": m.get("savings")}
    if taxonomy.multilabel:
        report["summary"] = _multilabel_scores(m) | {"macro_f1": m.get("macro_f1")}
    return report


def _per_tag_with_thresholds(taxonomy: Taxonomy, live: ModelVersion) -> list[dict]:
    """One row per output of a multi-label model: held-out precision / recall / F1 / support
    (None when it was trained on every label, too few being held out) beside the threshold it
    says yes at. Thresholds are stored for every version, in the order of its outputs
    (tag_ids), as are the names of the evaluated ones ("labels"): rows are matched by position,
    so a tag renamed since keeps its numbers."""
    m = live.metrics or {}
    if not (names := m.get("labels")):
        paths = _tag_paths(taxonomy)
        names = [paths.get(t, "?") for t in live.tag_ids]
    thresholds = m.get("thresholds") or [None] * len(names)
    per_tag = m.get("per_tag") or {}
    empty = {"precision": None, "recall": None, "f1": None, "support": None}
    return [{"tag": name, **(_evidence(per_tag[name]) if name in per_tag else empty), "threshold": t}
            for name, t in zip(names, thresholds)]


def _evidence(vals: dict, predicted: int | None = None) -> dict:
    """A tag's held-out scores with the ones there is no evidence for as None (the page shows
    '—'): recall of a tag no held-out image has, precision of one the model never said. Shown as
    0.00 they read as a model that fails at the tag."""
    predicted = vals.get("predicted", predicted)
    out = dict(vals)
    if vals.get("support") == 0:
        out["recall"] = None
        if not predicted:
            out["f1"] = None
    if predicted == 0:
        out["precision"] = None
    return out


# A judge gets a held-out suggestion and its label's tags, and returns what the gallery shows
# of a miss (the label, the model's answer), or None when the model got it right.
Judge = Callable[[Suggestion, list[int]], "dict | None"]


def gallery(taxonomy: Taxonomy) -> list[dict]:
    """Held-out assets (never trained on) whose current label the live model gets wrong: another
    top-1 tag, or (multi-label) another set of tags over their thresholds. None when the live
    model had too few held-out labels: it was trained on every label then."""
    live = taxonomy.live_model
    if live is None or not (live.metrics or {}).get("n_holdout"):
        return []
    names = _tag_paths(taxonomy)
    picked = _held_out_labels(taxonomy, live)
    tags_of: dict[int, list[int]] = {}
    for label_id, tag_id in Label.tags.through.objects.filter(label_id__in=[lb.pk for lb in picked]) \
            .values_list("label_id", "tag_id").order_by("label_id", "tag_id"):
        tags_of.setdefault(label_id, []).append(tag_id)
    suggestions = {
        s.asset_id: s for s in Suggestion.objects.filter(model_version=live, asset_id__in=[lb.asset_id for lb in picked])
    }
    judge = _multilabel_judge(taxonomy, live, names) if taxonomy.multilabel else _single_label_judge(names)
    out = []
    for lb in picked:
        s, truth = suggestions.get(lb.asset_id), tags_of.get(lb.pk)
        miss = judge(s, truth) if s is not None and truth else None
        if miss is None:
            continue
        out.append({"asset": lb.asset_id, "name": lb.asset.original_name,
                    "thumb": reverse("asset_thumb", args=[lb.asset_id]), **miss})
        if len(out) >= GALLERY:
            break
    return out


def _held_out_labels(taxonomy: Taxonomy, live: ModelVersion) -> list[Label]:
    """The newest current labels of held-out assets the live model scored (bounded scan)."""
    labels = (
        Label.objects.filter(taxonomy=taxonomy, is_current=True)
        .filter(Exists(Suggestion.objects.filter(model_version=live, asset_id=OuterRef("asset_id"))))
        .select_related("asset", "batch")
        .order_by("-id")[:GALLERY_SCAN]
    )
    metrics = live.metrics or {}
    if "holdout_assets" in metrics:  # the run's own split (near-duplicate groups: training._note_split)
        held = set(metrics["holdout_assets"])
        return [lb for lb in labels if lb.asset_id in held]
    # a version trained before that was split per label, by this rule
    moved = set(metrics.get("holdout_moved") or ())  # trained on after all (training_data)
    return [lb for lb in labels if lb.asset_id not in moved
            and may_hold_out(lb.asset.sha256, lb.batch.kind if lb.batch else None)]


def _single_label_judge(names: dict[int, str]) -> Judge:
    def judge(s: Suggestion, truth: list[int]) -> dict | None:
        if s.top1_tag_id == truth[0]:  # a single-label label has one tag
            return None
        return {"label": names.get(truth[0], "?"), "predicted": names.get(s.top1_tag_id, "?"),
                "prob": round(float(s.top1_prob), 3)}
    return judge


def _multilabel_judge(taxonomy: Taxonomy, live: ModelVersion, names: dict[int, str]) -> Judge:
    """Compares the tags the review page would suggest (each over its tuned threshold) with the
    label's. Only tags the model can answer count: one added or retired since it was trained
    would otherwise make every image with it a "miss" nobody can act on."""
    retired = label_service.retired_tag_ids(taxonomy)
    answerable = set(live.tag_ids) - retired

    def tag_names(ids: set[int] | list[int]) -> list[str]:
        return sorted(names.get(t, "?") for t in ids)

    def judge(s: Suggestion, truth: list[int]) -> dict | None:
        s.model_version = live  # its own version, without a query per row
        predicted = label_service.suggested_tag_ids(taxonomy, s, retired)
        if predicted == set(truth) & answerable:
            return None
        label_tags, predicted_tags = tag_names(truth), tag_names(predicted)
        # the difference too: two sets of several tags are slow to compare by eye
        return {"label": ", ".join(label_tags), "predicted": ", ".join(predicted_tags) or "no tag",
                "label_tags": label_tags, "predicted_tags": predicted_tags, "prob": None,
                "missed": tag_names(set(truth) & answerable - predicted), "extra": tag_names(predicted - set(truth))}
    return judge


def _tag_paths(taxonomy: Taxonomy) -> dict[int, str]:
    return {t.pk: t.path for t in taxonomy.tags.select_related("parent")}


def progress(taxonomy: Taxonomy, include_imports: bool) -> dict:
    """Live progress of long jobs: the latest training run and (admins) running imports."""
    run = TrainingRun.objects.filter(taxonomy=taxonomy).order_by("-id").first()
    body: dict = {
        "run": None if run is None else {
            "id": run.pk, "state": run.state, "progress": run.progress, "message": run.message,
            "active": run.state in TrainingRun.ACTIVE,
        },
        "imports": [],
    }
    if include_imports:
        jobs = ImportJob.objects.filter(client_id=taxonomy.client_id, state__in=[JobState.QUEUED, JobState.RUNNING])
        body["imports"] = [
            {"id": j.pk, "state": j.state, "processed": j.processed, "total": j.total, "percent": round(100 * j.progress)}
            for j in jobs.order_by("id")[:10]
        ]
    body["active"] = bool(body["imports"]) or bool(body["run"] and body["run"]["active"])
    return body
