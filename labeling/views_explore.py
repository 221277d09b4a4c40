"""Exploring a library by similarity: clusters, more like this, image search, the 2-D map,
near-duplicates and the second-look queue, plus the bulk action they all feed.

Pages use taxonomy_view (404 for non-members); JSON endpoints reuse views.api_view (JSON
401/404, 403 for viewers' writes, 400 with the field). Logic lives in services.
"""
from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_safe, require_http_methods, require_POST

from .models import Asset, BulkAction, Cluster, JobState, Role
from .permissions import taxonomy_view
from .services import bulk, clusters, duplicates, labels, second_look as second_look_service, similarity
from .views import BadInput, api_view, can_label, is_id, json_body, json_error, parse_id, tag_list, tag_names

RECLUSTER_INLINE_MAX = 20_000  # assets; larger libraries are clustered by the worker
MAX_SEARCH_BYTES = 20 * 1024 * 1024


def _context(request: HttpRequest, **extra) -> dict:
    """What every explore page and its scripts share: taxonomy, tags, urls, rights."""
    t, slug = request.taxonomy, request.client.slug
    config = {
        "canLabel": can_label(request.role),
        "multilabel": t.multilabel,
        "tags": tag_list(t),
        "bulkUrl": reverse("bulk_json", args=[slug, t.pk]),
        "undoUrl": reverse("bulk_undo_json", args=[slug, t.pk]),
        "labelUrl": reverse("label_json", args=[slug, t.pk]),
        "similarUrl": reverse("similar", args=[slug, t.pk, 0]).replace("/assets/0/", "/assets/{id}/"),
    }
    config.update(extra.pop("config", {}))
    return {"client": request.client, "taxonomy": t, "can_label": config["canLabel"],
            "is_admin": request.role == Role.ADMIN, "config": config, **extra}


def _tiles(request: HttpRequest, asset_ids: list[int], extra: dict | None = None) -> list[dict]:
    rows = similarity.describe(request.taxonomy, asset_ids)
    names = tag_names(request.taxonomy)
    out = []
    for a in asset_ids:
        if a in rows:
            row = {**rows[a], **(extra or {}).get(a, {})}
            row["label_name"] = ", ".join(names.get(t, "?") for t in row["label"] or [])
            row["suggested_name"] = ", ".join(names.get(t, "?") for t in row["suggested_tags"])
            if "alt" in row:  # second look: the check model's other tag, and the one "f" applies
                row["alt_name"] = names.get(row["alt"], "")
                row["fix_name"] = names.get(row.get("fix"), "")
            out.append(row)
    return out


# --- clusters ----------------------------------------------------------------------------
@require_safe
@taxonomy_view()
def cluster_list(request: HttpRequest) -> HttpResponse:
    clustering = clusters.current(request.client.pk)
    rows = clusters.overview(request.taxonomy, clustering) if clustering else []
    names = tag_names(request.taxonomy)
    for r in rows:
        r["majority_name"] = names.get(r["stats"].get("majority_suggested"), "")
    # A first build after the demo's or a big import takes a while: say so instead of "none".
    building = request.client.clusterings.filter(
        is_current=False, state__in=[JobState.QUEUED, JobState.RUNNING]).exists()
    return render(request, "labeling/explore/clusters.html",
                  _context(request, clustering=clustering, rows=rows, building=building))


@require_POST
@taxonomy_view(at_least=Role.OPERATOR)
def cluster_rebuild(request: HttpRequest) -> HttpResponse:
    from . import tasks

    n = Asset.objects.filter(client=request.client).exclude(embedded_with="").count()
    if n <= RECLUSTER_INLINE_MAX:
        clusters.recluster(request.client.pk)
    else:
        tasks.enqueue_recluster(request.client.pk)
    return redirect("clusters", request.client.slug, request.taxonomy.pk)


@require_safe
@taxonomy_view()
def cluster_detail(request: HttpRequest, index: int) -> HttpResponse:
    clustering = clusters.current(request.client.pk)
    built = parse_id(request.GET.get("v"))  # the build the link was made from
    if clustering and built and built != clustering.pk:
        return _rebuilt(request, built, index, clustering)
    cluster = get_object_or_404(Cluster, clustering=clustering, index=index) if clustering else None
    if cluster is None:
        raise Http404("No such cluster")
    tiles = _tiles(request, clusters.members(cluster))
    stats = (cluster.stats or {}).get(str(request.taxonomy.pk), {})
    return render(request, "labeling/explore/cluster.html", _context(request, cluster=cluster, stats=stats, tiles=tiles))


def _rebuilt(request: HttpRequest, built: int, index: int, clustering) -> HttpResponse:
    """A link to a cluster of an earlier build (clusters are rebuilt after an import, and their
    indexes reassigned): lead to the cluster that now holds most of its images, and say so,
    rather than show another cluster under the same address."""
    old = Cluster.objects.filter(clustering_id=built, clustering__client=request.client, index=index).first()
    new = clusters.successor(old, clustering) if old else None
    slug, t = request.client.slug, request.taxonomy.pk
    if new is None:
        messages.info(request, "The clusters were rebuilt since that link was made; pick one again.")
        return redirect("clusters", slug, t)
    messages.info(request, f"The clusters were rebuilt since that link was made: this is cluster {new.index + 1}, "
                           f"which holds most of the images of the one you had open.")
    return redirect(reverse("cluster", args=[slug, t, new.index]) + f"?v={clustering.pk}")


# --- more like this, search -----------------------------------------------------------------
def _filter_args(request: HttpRequest) -> tuple[str, int | None]:
    flt = request.GET.get("filter", "all")
    tag = request.GET.get("tag")
    if flt not in similarity.FILTERS:
        raise BadInput(f"filter: one of {', '.join(similarity.FILTERS)}")
    if flt == "tag":
        if (tag_id := parse_id(tag)) is None:
            raise BadInput("tag: a tag id expected")
        return flt, tag_id
    return flt, None


@require_safe
@taxonomy_view()
def similar(request: HttpRequest, asset_id: int) -> HttpResponse:
    asset = get_object_or_404(Asset, pk=asset_id, client=request.client)
    try:
        flt, tag = _filter_args(request)
    except BadInput:
        flt, tag = "all", None
    hits = similarity.neighbours(request.taxonomy, asset.pk, k=48, filter=flt, tag_id=tag)
    tiles = _tiles(request, [h["asset"] for h in hits], {h["asset"]: {"similarity": h["similarity"]} for h in hits})
    return render(request, "labeling/explore/similar.html", _context(
        request, asset=_tiles(request, [asset.pk])[0], tiles=tiles, filter=flt, tag=tag))


@require_safe
@api_view()
def similar_json(request: HttpRequest) -> JsonResponse:
    if (asset_id := parse_id(request.GET.get("asset"))) is None:
        raise BadInput("asset: an asset id expected")
    if not Asset.objects.filter(pk=asset_id, client_id=request.client.pk).exists():
        return json_error("asset: not found", 404, "asset")
    flt, tag = _filter_args(request)
    k = min(parse_id(request.GET.get("k")) or 24, 200)
    return JsonResponse({"items": similarity.neighbours(request.taxonomy, asset_id, k=k, filter=flt, tag_id=tag)})


@require_http_methods(["GET", "POST"])
@taxonomy_view()
def search(request: HttpRequest) -> HttpResponse:
    tiles, error, upload = None, None, None
    if request.method == "POST":
        upload = request.FILES.get("image")
        if upload is None:
            error = "Choose an image to search with."
        elif upload.size > MAX_SEARCH_BYTES:
            error = "That image is too large (20 MB at most)."
        else:
            try:
                hits = similarity.search_image(request.taxonomy, upload, k=48)  # read in memory, never stored
                tiles = _tiles(request, [h["asset"] for h in hits], {h["asset"]: {"similarity": h["similarity"]} for h in hits})
            except Exception:  # PIL raises many types for a file that is not an image
                error = "That file could not be read as an image."
    query_name = upload.name if tiles is not None else ""
    return render(request, "labeling/explore/search.html", _context(request, tiles=tiles, error=error, query_name=query_name))


# --- map --------------------------------------------------------------------------------
@require_safe
@taxonomy_view()
def map_page(request: HttpRequest) -> HttpResponse:
    t, slug = request.taxonomy, request.client.slug
    return render(request, "labeling/explore/map.html", _context(
        request, config={"mapUrl": reverse("map_json", args=[slug, t.pk])}))


@require_safe
@api_view()
def map_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(clusters.map_points(request.taxonomy))


# --- duplicates, second look ----------------------------------------------------------------
@require_safe
@taxonomy_view(at_least=Role.ADMIN)
def duplicate_list(request: HttpRequest) -> HttpResponse:
    groups = []
    for g in duplicates.groups(request.client.pk)[:200]:
        offer = duplicates.offer(request.taxonomy, g)
        names = tag_names(request.taxonomy)
        if offer:
            offer["names"] = ", ".join(names.get(t, "?") for t in offer["tags"])
        groups.append({"tiles": _tiles(request, g), "offer": offer})
    return render(request, "labeling/explore/duplicates.html", _context(
        request, groups=groups, threshold=duplicates.NEAR_DUP_COSINE))


@require_safe
@taxonomy_view()
def second_look(request: HttpRequest) -> HttpResponse:
    page = second_look_service.second_look(request.taxonomy)
    tiles = _tiles(request, [i["asset"] for i in page.rows], {i["asset"]: i for i in page.rows})
    return render(request, "labeling/explore/second_look.html", _context(
        request, tiles=tiles, scores=page, n_new=max(0, page.n_labels - page.n_scored),
        config={"keepUrl": reverse("keep_json", args=[request.client.slug, request.taxonomy.pk])}))


@require_POST
@api_view(at_least=Role.OPERATOR)
def keep_json(request: HttpRequest) -> JsonResponse:
    """Second look's "keep": the label is confirmed by saving the same tags again (history
    shows who confirmed it; the event's before == after takes it off the list)."""
    body = json_body(request)
    asset = Asset.objects.filter(pk=body.get("asset") if is_id(body.get("asset")) else None,
                                 client_id=request.client.pk).first()
    current = labels.current_label(request.taxonomy, asset) if asset else None
    if current is None:
        return json_error("asset: not found or not labeled", 404, "asset")
    label = labels.save_label(request.taxonomy, asset, labels.tag_ids_of(current), user=request.user,
                              source=current.source)
    return JsonResponse({"asset": asset.pk, "label": label.pk})


# --- bulk ---------------------------------------------------------------------------------
@require_POST
@api_view(at_least=Role.OPERATOR)
def bulk_json(request: HttpRequest) -> JsonResponse:
    body = json_body(request)
    assets, tags, accept = body.get("assets"), body.get("tags") or [], bool(body.get("accept"))
    if not isinstance(assets, list) or not all(is_id(a) for a in assets):
        raise BadInput("assets: a list of asset ids expected")
    if not isinstance(tags, list) or not all(is_id(t) for t in tags):
        raise BadInput("tags: a list of tag ids expected")
    try:
        action = bulk.apply(request.taxonomy, assets, request.user, tag_ids=tags, accept=accept)
    except bulk.BulkError as exc:
        if str(exc) == "assets: not found":
            return json_error(str(exc), 404, "assets")
        raise BadInput(str(exc))
    return JsonResponse({"action": action.pk, "n_labels": action.n_labels, "kept": action.n_kept,
                         "labels": bulk.stored_tags(action)})


@require_POST
@api_view(at_least=Role.OPERATOR)
def bulk_undo_json(request: HttpRequest) -> JsonResponse:
    body = json_body(request)
    action = BulkAction.objects.filter(
        pk=body.get("action") if is_id(body.get("action")) else None, taxonomy=request.taxonomy
    ).select_related("taxonomy__client").first()
    if action is None:
        return json_error("action: not found", 404, "action")
    if not bulk.may_undo(action, request.user):
        return json_error("action: only its author or an admin may undo it", 403, "action")
    assets = bulk.undo(action, request.user)
    return JsonResponse({"action": action.pk, "undone": len(assets), "assets": assets})
