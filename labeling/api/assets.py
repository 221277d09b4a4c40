"""Assets: list with filters and keyset cursors, upload (through the import service), one
asset, its label history and its suggestions."""
from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from ..models import Asset, ClusterMember, ImportJob, Label, LabelEvent, Role, Suggestion, Tag, Taxonomy
from ..services import importing, images
from ..services.images import max_upload_bytes, max_upload_files
from ..services.suggesting import as_shown, ranked_tags
from .parsers import PayloadTooLarge
from .base import MAX_ID, ScopedAPIView, decode_cursor, float_param, get_or_404, int_param, page_limit, page_serializer, paged
from .serializers import (
    AssetSerializer, ImportJobSerializer, LabelEventSerializer, SuggestionSerializer, UploadSerializer,
)

MAX_HISTORY = 500


def _after(sub: QuerySet, after: int | None) -> QuerySet:
    """Repeat the page's "asset id > cursor" inside an EXISTS subquery: PostgreSQL does not
    carry the outer range into it, and a merge join would then read the subquery's index
    from the start on every deep page (bench/paging.py, 1M assets: 145 ms -> 1.3 ms)."""
    return sub if after is None else sub.filter(asset_id__gt=after)


def _current_labels(taxonomy, ref: str, after: int | None = None) -> QuerySet:
    """The asset's current label in the taxonomy, for an EXISTS on the outer row `ref`."""
    return _after(Label.objects.filter(asset_id=OuterRef(ref), taxonomy=taxonomy, is_current=True), after)


def refuse_large_body(request: Request, limit: int, field: str) -> None:
    """Checked before the body is parsed, so a too-large upload is never stored."""
    try:
        length = images.declared_length(request.META)
    except ValueError:
        raise ValidationError({field: ["the request's Content-Length is not a whole number"]}) from None
    if length > limit:
        raise PayloadTooLarge({field: [f"request body over {images.size_text(limit)}"]})


# --- suggestions as the API shows them -------------------------------------------------------


def suggestion_data(taxonomy: Taxonomy, s: Suggestion, tags: dict[int, Tag], top: int) -> dict:
    s, suggested = as_shown(taxonomy, s, tags)  # as the review page shows it
    return {
        "model_version": s.model_version_id,
        "version": s.model_version.version,
        "uncertainty": round(float(s.uncertainty), 4),
        "suggested": suggested,
        "top": ranked_tags(s.model_version.tag_ids, s.probs, tags, top),
    }


def taxonomy_context(taxonomy: Taxonomy | None, asset_ids: list[int], top: int = 3) -> dict:
    """Current labels and live suggestions of a page of assets: two queries, not two per row."""
    if taxonomy is None or not asset_ids:
        return {}
    labels = {
        lb.asset_id: lb
        for lb in Label.objects.filter(taxonomy=taxonomy, is_current=True, asset_id__in=asset_ids)
        .select_related("user").prefetch_related("tags")
    }
    suggestions = {}
    if taxonomy.live_model_id:
        tags = {t.pk: t for t in taxonomy.tags.select_related("parent")}
        rows = Suggestion.objects.filter(model_version_id=taxonomy.live_model_id, asset_id__in=asset_ids).select_related(
            "model_version"
        )
        suggestions = {s.asset_id: suggestion_data(taxonomy, s, tags, top) for s in rows}
    return {"labels": labels, "suggestions": suggestions}


# --- listing ----------------------------------------------------------------------------------

LIST_PARAMS = [
    OpenApiParameter("taxonomy", int, description="taxonomy for label/suggestion fields and the filters below"),
    OpenApiParameter("tag", int, description="current label has this tag (needs taxonomy)"),
    OpenApiParameter("state", str, enum=["labeled", "unlabeled"], description="label state (needs taxonomy)"),
    OpenApiParameter("uncertainty_min", float, description="live suggestion's uncertainty >= (0..1)"),
    OpenApiParameter("uncertainty_max", float, description="live suggestion's uncertainty <= (0..1)"),
    OpenApiParameter("cluster", int, description="member of this cluster of the current clustering, numbered "
                                                "as the explore pages show it (1 = 'Cluster 1')"),
    OpenApiParameter("order", str, enum=["id", "uncertain"], description="id (default) or most uncertain first"),
    OpenApiParameter("cursor", str, description="next_cursor of the previous page"),
    OpenApiParameter("limit", int, description="1..200, default 50"),
]


class AssetListAPI(ScopedAPIView):
    """GET: the client's assets, filtered, by keyset pages. POST (admins): upload images or ZIPs;
    they are imported by a worker like a browser upload (202 + the import job)."""

    write_role = Role.ADMIN

    def filters(self, request: Request) -> dict:
        p = request.query_params
        taxonomy = None
        taxonomy_id = int_param(request, "taxonomy", 1, MAX_ID)
        if taxonomy_id is not None:
            taxonomy = Taxonomy.objects.filter(client=self.client, pk=taxonomy_id).select_related("live_model").first()
            if taxonomy is None:
                raise ValidationError({"taxonomy": ["not a taxonomy of this client"]})
        f = {
            "taxonomy": taxonomy,
            "tag": int_param(request, "tag", 1, MAX_ID),
            "state": p.get("state") or None,
            "umin": float_param(request, "uncertainty_min", 0.0, 1.0),
            "umax": float_param(request, "uncertainty_max", 0.0, 1.0),
            "cluster": int_param(request, "cluster", 1, 1_000_000),
            "order": p.get("order") or "id",
        }
        if f["state"] not in (None, "labeled", "unlabeled"):
            raise ValidationError({"state": ["must be 'labeled' or 'unlabeled'"]})
        if f["order"] not in ("id", "uncertain"):
            raise ValidationError({"order": ["must be 'id' or 'uncertain'"]})
        for name, key in (("tag", "tag"), ("state", "state"), ("uncertainty_min", "umin"), ("uncertainty_max", "umax")):
            if f[key] is not None and taxonomy is None:
                raise ValidationError({name: ["needs ?taxonomy="]})
        if f["tag"] is not None and not Tag.objects.filter(taxonomy=taxonomy, pk=f["tag"]).exists():
            raise ValidationError({"tag": ["not a tag of this taxonomy"]})  # not a silent empty page
        needs_model = f["order"] == "uncertain" or f["umin"] is not None or f["umax"] is not None
        if needs_model and (taxonomy is None or not taxonomy.live_model_id):
            raise ValidationError({"taxonomy": ["uncertainty needs a taxonomy with a live model"]})
        return f

    @extend_schema(parameters=LIST_PARAMS, responses=page_serializer(AssetSerializer), operation_id="assets_list")
    def get(self, request: Request, slug: str) -> Response:
        f = self.filters(request)
        limit = page_limit(request)
        if f["order"] == "uncertain":
            rows, cursor = self.by_uncertainty(request, f, limit)
        else:
            rows, cursor = self.by_id(request, f, limit)
        context = taxonomy_context(f["taxonomy"], [a.pk for a in rows])
        context["request"] = request  # absolute image links
        return Response({"results": AssetSerializer(rows, many=True, context=context).data, "next_cursor": cursor})

    def _label_filters(self, f: dict, ref: str, after: int | None = None) -> list:
        taxonomy, out = f["taxonomy"], []
        if taxonomy is None:
            return out
        if f["tag"] is not None:
            out.append(Exists(_current_labels(taxonomy, ref, after).filter(tags=f["tag"])))
        return out

    def _cluster_filter(self, f: dict, ref: str) -> list:
        if f["cluster"] is None:
            return []
        members = ClusterMember.objects.filter(
            # the pages number clusters from 1, Cluster.index from 0
            asset_id=OuterRef(ref), cluster__index=f["cluster"] - 1,
            cluster__clustering__client=self.client, cluster__clustering__is_current=True,
        )
        return [Exists(members)]

    def by_id(self, request: Request, f: dict, limit: int) -> tuple[list, str | None]:
        # Keyset on the primary key: "id > last" is a range scan however deep the page.
        qs: QuerySet = Asset.objects.filter(client=self.client)
        cursor = decode_cursor(request.query_params.get("cursor"), {"id": int})
        after = cursor["id"] if cursor else None
        if after is not None:
            qs = qs.filter(pk__gt=after)
        taxonomy = f["taxonomy"]
        if taxonomy is not None and f["state"]:
            labeled = Exists(_current_labels(taxonomy, "pk", after))
            qs = qs.filter(labeled) if f["state"] == "labeled" else qs.exclude(labeled)
        if f["umin"] is not None or f["umax"] is not None:
            scored = _after(Suggestion.objects.filter(asset_id=OuterRef("pk")), after)
            qs = qs.filter(Exists(self._uncertainty(f, scored)))
        for condition in self._label_filters(f, "pk", after) + self._cluster_filter(f, "pk"):
            qs = qs.filter(condition)
        return paged(request, qs.order_by("pk")[: limit + 1], limit, lambda a: {"id": a.pk})

    def _uncertainty(self, f: dict, qs: QuerySet) -> QuerySet:
        qs = qs.filter(model_version_id=f["taxonomy"].live_model_id)
        if f["umin"] is not None:
            qs = qs.filter(uncertainty__gte=f["umin"])
        if f["umax"] is not None:
            qs = qs.filter(uncertainty__lte=f["umax"])
        return qs

    def by_uncertainty(self, request: Request, f: dict, limit: int) -> tuple[list, str | None]:
        # Keyset on (uncertainty desc, suggestion id) of the live model's rows: the order of the
        # index suggestion_by_uncertainty (model_version, -uncertainty, id).
        qs = self._uncertainty(f, Suggestion.objects.all())
        if f["state"]:
            qs = qs.filter(is_labeled=f["state"] == "labeled")
        cursor = decode_cursor(request.query_params.get("cursor"), {"u": float, "id": int})
        if cursor:
            # the plain "<=" bound is redundant for the result but is what PostgreSQL can use as
            # an index condition; the OR alone is a filter over every row before the cursor
            # (bench/paging.py, 1M assets: 1.7 s -> 6 ms at the end of the list)
            qs = qs.filter(Q(uncertainty__lte=cursor["u"]),
                           Q(uncertainty__lt=cursor["u"]) | Q(uncertainty=cursor["u"], pk__gt=cursor["id"]))
        for condition in self._label_filters(f, "asset_id") + self._cluster_filter(f, "asset_id"):
            qs = qs.filter(condition)
        rows = qs.select_related("asset").order_by("-uncertainty", "pk")[: limit + 1]
        page, cursor_out = paged(request, rows, limit, lambda s: {"u": s.uncertainty, "id": s.pk})
        return [s.asset for s in page], cursor_out

    @extend_schema(request={"multipart/form-data": UploadSerializer}, responses={202: ImportJobSerializer})
    def post(self, request: Request, slug: str) -> Response:
        refuse_large_body(request, max_upload_bytes(), "files")
        serializer = UploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        files = serializer.validated_data["files"]
        if len(files) > max_upload_files():
            raise ValidationError({"files": [f"at most {max_upload_files()} files at once; send a ZIP instead"]})
        for i, f in enumerate(files):
            # A ZIP may be as large as the whole upload: its members are checked one by one on import.
            if f.size > images.max_file_bytes() and not (f.name or "").lower().endswith(".zip"):
                raise ValidationError({"files": {i: [f"{f.name}: image over {images.size_text(images.max_file_bytes())}"]}})
        taxonomy = None
        if serializer.validated_data.get("labels_taxonomy"):
            taxonomy = Taxonomy.objects.filter(client=self.client, pk=serializer.validated_data["labels_taxonomy"]).first()
            if taxonomy is None:
                raise ValidationError({"labels_taxonomy": ["not a taxonomy of this client"]})
        job = importing.stage_upload(self.client, [(f, "") for f in files], user=request.user, labels_taxonomy=taxonomy)
        importing.enqueue(job)  # broker down: the sweep picks the queued job up later
        body = ImportJobSerializer(importing.summary(job)).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": f"../imports/{job.pk}/"})


class AssetDetailAPI(ScopedAPIView):
    """One asset: file name, size, sha256; with ``?taxonomy=`` its current label and live suggestion there."""

    def asset(self, asset_id: int) -> Asset:
        return get_or_404(Asset.objects.filter(client=self.client), pk=asset_id)

    @extend_schema(parameters=[OpenApiParameter("taxonomy", int)], responses=AssetSerializer)
    def get(self, request: Request, slug: str, asset_id: int) -> Response:
        asset = self.asset(asset_id)
        taxonomy_id = int_param(request, "taxonomy", 1, MAX_ID)
        taxonomy = None
        if taxonomy_id is not None:
            taxonomy = Taxonomy.objects.filter(client=self.client, pk=taxonomy_id).first()
            if taxonomy is None:
                raise ValidationError({"taxonomy": ["not a taxonomy of this client"]})
        context = {**taxonomy_context(taxonomy, [asset.pk]), "request": request}
        return Response(AssetSerializer(asset, context=context).data)


class ImportJobAPI(ScopedAPIView):
    """Progress of an import (poll it): processed / total, per-file errors."""

    read_role = Role.ADMIN

    @extend_schema(responses=ImportJobSerializer)
    def get(self, request: Request, slug: str, job_id: int) -> Response:
        job = get_or_404(ImportJob.objects.filter(client=self.client), pk=job_id)
        return Response(ImportJobSerializer(importing.summary(job)).data)


class AssetHistoryAPI(ScopedAPIView):
    """Every label change of one asset in a taxonomy, newest first: who, when, before, after."""

    @extend_schema(responses=LabelEventSerializer(many=True))
    def get(self, request: Request, slug: str, taxonomy_id: int, asset_id: int) -> Response:
        asset = get_or_404(Asset.objects.filter(client=self.client), pk=asset_id)
        events = LabelEvent.objects.filter(taxonomy=self.taxonomy, asset=asset).select_related("user").order_by("-id")
        return Response(LabelEventSerializer(events[:MAX_HISTORY], many=True).data)


class SuggestionAPI(ScopedAPIView):
    """The live model's top-n tags for one asset, with probabilities."""

    @extend_schema(
        parameters=[OpenApiParameter("top", int, description="1..20, default 3")],
        responses={200: SuggestionSerializer, 404: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, slug: str, taxonomy_id: int, asset_id: int) -> Response:
        asset = get_or_404(Asset.objects.filter(client=self.client), pk=asset_id)
        top = int_param(request, "top", 1, 20) or 3
        taxonomy = self.taxonomy
        s = None
        if taxonomy.live_model_id:
            s = Suggestion.objects.filter(model_version_id=taxonomy.live_model_id, asset=asset).select_related(
                "model_version"
            ).first()
        if s is None:
            raise NotFound("no suggestion: no live model yet, or the asset is not scored yet")
        tags = {t.pk: t for t in taxonomy.tags.select_related("parent")}
        return Response(SuggestionSerializer(suggestion_data(taxonomy, s, tags, top)).data)
