"""Pages and JSON endpoints of the review loop.

Pages go through the permission decorators (404 for non-members). The JSON endpoints answer
in JSON whatever happens, because the review page reads every reply with fetch(): 401 when
the session is gone, 404 for what the user may not see, 403 when a viewer tries to write,
400 with the offending field for bad input.
"""
from __future__ import annotations

import json
from functools import wraps
from typing import Callable

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_safe, require_POST

from .api.base import MAX_ID, asset_id_list, is_id
from .models import Asset, Label, Role, Taxonomy, TrainingRun
from .permissions import RANK, clients_of, client_view, get_taxonomy, role_in, taxonomy_view
from .services import labels, queue

# Digits 1-9 pick a tag on the review page; tags past the ninth are reached by type-ahead.
MAX_KEYED_TAGS = 9
# Ids the review page asks the queue to leave out (buffered + skipped); a cap keeps the
# query string and the NOT IN clause bounded for a very long session.
MAX_EXCLUDE = 1000


class BadInput(ValueError):
    """A request parameter or body field is wrong; the message starts with the field name."""


def json_error(message: str, status: int, field: str | None = None, **extra) -> JsonResponse:
    body = {"error": message, **extra}
    if field:
        body["field"] = field
    return JsonResponse(body, status=status)


def _bad_input(message: str) -> JsonResponse:
    # services and BadInput both phrase errors as "field: what is wrong".
    field, _, _ = message.partition(":")
    return json_error(message, 400, field.strip() or None)


def can_label(role: str | None) -> bool:
    return role is not None and RANK[role] >= RANK[Role.OPERATOR]


def api_view(at_least: str = Role.VIEWER) -> Callable:
    """Like taxonomy_view, but every refusal is JSON and viewers get 403 (not 404) on writes,
    so the page can say "read-only" instead of "not found"."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request: HttpRequest, slug: str, taxonomy_id: int) -> HttpResponse:
            if not request.user.is_authenticated:
                return json_error("login required", 401)
            try:
                request.taxonomy = get_taxonomy(request.user, slug, taxonomy_id)
            except Http404:
                return json_error("not found", 404)
            request.client = request.taxonomy.client
            request.role = role_in(request.user, request.client)
            if RANK[request.role] < RANK[at_least]:
                return json_error(f"your role ({request.role}) may not do this", 403)
            try:
                return view(request)
            except BadInput as exc:
                return _bad_input(str(exc))
            except labels.LabelError as exc:
                return _bad_input(str(exc))

        return wrapper

    return decorator


def tag_list(taxonomy: Taxonomy) -> list[dict]:
    """Active tags with their digit keys. A key follows a tag's place among all tags, retired
    ones included: retiring a tag leaves its digit unused instead of shifting every key after
    it under the operators' fingers (an admin can move tags to reclaim it)."""
    tags = taxonomy.tags.select_related("parent").order_by("position", "name")
    return [
        {"id": t.pk, "name": t.path, "key": str(i + 1) if i < MAX_KEYED_TAGS else None}
        for i, t in enumerate(tags) if not t.retired
    ]


def tag_names(taxonomy: Taxonomy) -> dict[int, str]:
    """Every tag's path, retired ones marked: older labels still carry them."""
    return {t.pk: t.path + (" (retired)" if t.retired else "") for t in taxonomy.tags.select_related("parent")}


# --- pages -----------------------------------------------------------------------------


@require_safe
@login_required
def home(request: HttpRequest) -> HttpResponse:
    clients = list(clients_of(request.user))
    if len(clients) == 1:
        # Most users work for one client: skip a list with one entry.
        return redirect("client_home", slug=clients[0].slug)
    return render(request, "labeling/home.html", {"clients": clients})


@require_safe
@client_view()
def client_home(request: HttpRequest) -> HttpResponse:
    client = request.client
    n_assets = Asset.objects.filter(client=client).count()
    taxonomies = (
        Taxonomy.objects.filter(client=client)
        .select_related("live_model")
        .annotate(
            # distinct: the two joins (labels, tags) multiply each other's rows.
            n_labeled=Count("labels", filter=Q(labels__is_current=True), distinct=True),
            n_tags=Count("tags", filter=Q(tags__retired=False), distinct=True),
        )
        .order_by("name")
    )
    runs = {r.taxonomy_id: r for r in TrainingRun.objects.filter(taxonomy__client=client, state__in=TrainingRun.ACTIVE)}
    rows = [
        {
            "taxonomy": t,
            "n_labeled": t.n_labeled,
            "pct_labeled": round(100 * t.n_labeled / n_assets) if n_assets else 0,
            "live": t.live_model,
            "accuracy": (t.live_model.metrics or {}).get("accuracy") if t.live_model else None,
            "until_retrain": max(0, t.retrain_threshold - t.labels_since_train),
            "run": runs.get(t.pk),
        }
        for t in taxonomies
    ]
    return render(
        request,
        "labeling/client_home.html",
        {
            "client": client,
            "n_assets": n_assets,
            "rows": rows,
            "is_admin": request.role == Role.ADMIN,
            "can_label": can_label(request.role),
        },
    )


@require_safe
@taxonomy_view()
def review(request: HttpRequest) -> HttpResponse:
    taxonomy = request.taxonomy
    return render(
        request,
        "labeling/review.html",
        {
            "client": request.client,
            "taxonomy": taxonomy,
            "can_label": can_label(request.role),
            # Everything review.js needs, handed over by json_script (no inline JS).
            "config": {
                "multilabel": taxonomy.multilabel,
                "canLabel": can_label(request.role),
                "tags": tag_list(taxonomy),
            },
        },
    )


# --- JSON ------------------------------------------------------------------------------


def _int_list(raw: str, field: str) -> list[int]:
    try:
        return asset_id_list(raw)
    except ValueError as exc:
        raise BadInput(f"{field}: {exc}") from None


@require_safe
@api_view()
def queue_json(request: HttpRequest) -> JsonResponse:
    order = request.GET.get("order", queue.Order.UNCERTAIN)
    if order not in queue.ORDERS:
        raise BadInput(f"order: {queue.BAD_ORDER}")
    try:
        limit = int(request.GET.get("limit", 5))
    except ValueError:
        raise BadInput("limit: a whole number expected")
    # exclude: what the page holds (its leases are renewed); skipped: passed on (left to lapse).
    exclude = _int_list(request.GET.get("exclude", ""), "exclude")[:MAX_EXCLUDE]
    skipped = _int_list(request.GET.get("skipped", ""), "skipped")[: MAX_EXCLUDE - len(exclude)]
    taxonomy = request.taxonomy
    return JsonResponse(
        {
            # Operators lease what they are shown; a viewer's look hides nothing from them.
            "items": queue.review_batch(
                taxonomy, order=order, limit=limit, exclude=exclude, skipped=skipped,
                user=request.user if can_label(request.role) else None,
            ),
            "status": queue.queue_status(taxonomy),
            "tags": tag_list(taxonomy),
        }
    )


def json_body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadInput("body: not valid JSON")
    if not isinstance(body, dict):
        raise BadInput("body: a JSON object expected")
    return body


def parse_id(raw: str | None) -> int | None:
    """An id from a query string or form field, or None. ASCII digits only: str.isdigit()
    accepts "²", which int() refuses, and a 30-digit id overflows the database's integer."""
    if not raw or not (raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if 0 < value <= MAX_ID else None


@require_POST
@api_view(at_least=Role.OPERATOR)
def label_json(request: HttpRequest) -> JsonResponse:
    body = json_body(request)
    asset_id, tag_ids = body.get("asset"), body.get("tags")
    if not is_id(asset_id):
        raise BadInput("asset: an asset id expected")
    if not isinstance(tag_ids, list) or not all(is_id(t) for t in tag_ids):
        raise BadInput("tags: a list of tag ids expected")
    taxonomy = request.taxonomy
    asset = Asset.objects.filter(pk=asset_id, client_id=taxonomy.client_id).first()
    if asset is None:
        # Another client's asset looks exactly like a missing one.
        return json_error("asset: not found", 404, "asset")
    # base_label: the label id the page saw (null: unlabeled). Left out, the last write wins.
    base = body["base_label"] if "base_label" in body else labels.NO_CHECK
    if base is not None and base is not labels.NO_CHECK and not is_id(base):
        raise BadInput("base_label: a label id or null expected")
    # audit: the page got the asset in the audit order; the service checks that it did (services.audit)
    audit = body.get("audit", False)
    if not isinstance(audit, bool):
        raise BadInput("audit: true or false expected")
    try:
        label = labels.save_label(taxonomy, asset, tag_ids, user=request.user, base_label=base, audit=audit)
    except labels.LabelConflict as conflict:
        current = conflict.current
        return JsonResponse(
            {
                "error": "labeled by someone else meanwhile",
                "field": "base_label",
                "current": None if current is None else {"id": current.pk, "tags": labels.tag_ids_of(current)},
                "status": queue.queue_status(taxonomy),
            },
            status=409,
        )
    return JsonResponse(
        {
            "label": label.pk,
            "asset": asset.pk,
            "source": label.source,
            "audit": label.audit,
            "tags": sorted(t.pk for t in label.tags.all()),
            "status": queue.queue_status(taxonomy),
        }
    )


@require_POST
@api_view(at_least=Role.OPERATOR)
def undo_json(request: HttpRequest) -> JsonResponse:
    taxonomy = request.taxonomy
    # "before": past a refused label (below); the page posts JSON, a bare POST undoes the last
    before = (json_body(request) if request.content_type == "application/json" else {}).get("before")
    try:
        label = labels.undo_last(taxonomy, request.user, before=before if is_id(before) else None)
    except labels.UndoRefused as refused:
        # Not a bad request: the label was changed by a colleague; the page says so, and its
        # next undo sends "before" so it goes on to the user's older labels.
        return json_error(str(refused).partition(": ")[2], 409, "undo", refused=refused.label_id)
    # The asset is unlabeled again unless an older label of it became current.
    restored = (
        Label.objects.filter(asset_id=label.asset_id, taxonomy=taxonomy, is_current=True)
        .values_list("pk", flat=True).first()
        if label
        else None
    )
    return JsonResponse(
        {
            "undone": label.asset_id if label else None,
            "previous_label_restored": restored is not None,
            # the asset's current label now, for the page's next save of it (base_label)
            "label": restored,
            # unlabeled again: back to the front of this operator's queue, whichever session
            # labeled it (the page may no longer hold it)
            "item": queue.item_for(taxonomy, label.asset, request.user, audit=label.audit)
            if label and restored is None else None,
            "status": queue.queue_status(taxonomy),
        }
    )


@require_safe
@api_view()
def status_json(request: HttpRequest) -> JsonResponse:
    # hold: the assets the open review page holds. Its poll renews the caller's own leases on
    # them, so an operator who spends minutes on one image is not robbed of the ones buffered
    # behind it; a closed tab stops polling and its leases lapse. A viewer holds no leases.
    held = _int_list(request.GET.get("hold", ""), "hold")[:MAX_EXCLUDE]
    if held and can_label(request.role):
        queue.renew_leases(request.taxonomy, request.user, held)
    return JsonResponse(queue.queue_status(request.taxonomy))
