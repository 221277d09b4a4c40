"""Labels: one at a time (with an optimistic check against lost updates), in bulk, undo, and
the review queue with leases for many operators at once."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from ..models import Asset, BulkAction, Label, Role, Taxonomy
from ..services import bulk, labels, queue
from .base import MAX_ID, ScopedAPIView, asset_id_list, is_id, decode_cursor, int_param, page_limit, page_serializer, paged
from .serializers import (
    BulkLabelSerializer, BulkResultSerializer, LabelConflictSerializer, LabelCreateSerializer, LabelSerializer,
    QueueItemSerializer,
)

MAX_EXCLUDE = 1000


def suggested_tags(taxonomy: Taxonomy, asset: Asset) -> list[int] | None:
    """What the live model proposes for the asset; None when there is nothing to accept."""
    return bulk.suggested_tags(taxonomy, [asset.pk]).get(asset.pk) or None


class LabelListAPI(ScopedAPIView):
    """GET: current labels of the taxonomy (keyset pages). POST (operators): label one asset,
    accept its suggestion, or correct it. With ``base_label`` a concurrent change is a 409."""

    @extend_schema(
        parameters=[OpenApiParameter("asset", int), OpenApiParameter("cursor", str), OpenApiParameter("limit", int)],
        responses=page_serializer(LabelSerializer),
    )
    def get(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        limit = page_limit(request)
        qs = Label.objects.filter(taxonomy=self.taxonomy, is_current=True)
        asset_id = int_param(request, "asset", 1, MAX_ID)
        if asset_id is not None:
            qs = qs.filter(asset_id=asset_id)
        cursor = decode_cursor(request.query_params.get("cursor"), {"id": int})
        if cursor:
            qs = qs.filter(pk__gt=cursor["id"])
        rows = qs.select_related("user").prefetch_related("tags").order_by("pk")[: limit + 1]
        page, next_cursor = paged(request, rows, limit, lambda lb: {"id": lb.pk})
        return Response({"results": LabelSerializer(page, many=True).data, "next_cursor": next_cursor})

    @extend_schema(
        request=LabelCreateSerializer,
        responses={201: LabelSerializer, 409: LabelConflictSerializer},
    )
    def post(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        serializer = LabelCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        taxonomy = self.taxonomy
        asset = Asset.objects.filter(pk=data["asset"], client_id=taxonomy.client_id).first()
        if asset is None:
            raise NotFound("asset: not found")  # another client's asset looks like a missing one
        tag_ids = data.get("tags") or []
        if data["accept_suggestion"]:
            tag_ids = suggested_tags(taxonomy, asset)
            if tag_ids is None:
                raise ValidationError({"accept_suggestion": ["no suggestion to accept (no live model, or not scored)"]})
        if "base_label" in data:
            base = data["base_label"]
        else:
            # As in bulk "accept": a suggestion never replaces a label unless the caller names the
            # label it replaces (base_label); tags given explicitly are the caller's own decision.
            base = None if data["accept_suggestion"] else labels.NO_CHECK
        try:
            label = labels.save_label(taxonomy, asset, tag_ids, user=request.user, base_label=base, audit=data["audit"])
        except labels.LabelConflict as conflict:
            current = LabelSerializer(conflict.current).data if conflict.current else None
            detail = str(conflict) if "base_label" in data else (
                "already labeled: a suggestion does not replace a label (send base_label to replace it)")
            return Response({"detail": detail, "current": current}, status=status.HTTP_409_CONFLICT)
        return Response(LabelSerializer(label).data, status=status.HTTP_201_CREATED)


class LabelBulkAPI(ScopedAPIView):
    """Label many assets in one action (one BulkAction, one transaction, one retrain check):
    ``apply_tags`` gives them all the same tags (multi-label: added to the tags each already has),
    ``accept`` takes each one's suggestion (assets that have a label keep it)."""

    @extend_schema(request=BulkLabelSerializer, responses={201: BulkResultSerializer})
    def post(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        serializer = BulkLabelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # a bad tag to apply is a LabelError, answered as a field error before anything is written
        action, skipped = bulk.apply_each(self.taxonomy, data["assets"], request.user, tag_ids=data.get("tags"),
                                          accept=data["kind"] == BulkAction.Kind.ACCEPT_SUGGESTIONS)
        body = {"bulk_action": action.pk, "n_labels": action.n_labels, "skipped": skipped}
        return Response(BulkResultSerializer(body).data, status=status.HTTP_201_CREATED)


class LabelBulkUndoAPI(ScopedAPIView):
    """Undo a whole bulk action (its author or an admin): its labels that are still current are
    removed; assets labeled again since keep the newer label. Undoing twice removes nothing."""

    @extend_schema(request=None, responses={
        200: inline_serializer("BulkUndoResult", {
            "bulk_action": serializers.IntegerField(),
            "undone": serializers.IntegerField(help_text="labels removed by this call"),
            "assets": serializers.ListField(child=serializers.IntegerField(), help_text="their assets")}),
        403: OpenApiResponse(description="only its author or an admin may undo it"),
        404: OpenApiResponse(description="no such bulk action in this taxonomy")})
    def post(self, request: Request, slug: str, taxonomy_id: int, action_id: int) -> Response:
        action = BulkAction.objects.filter(pk=action_id, taxonomy=self.taxonomy).select_related("taxonomy__client").first()
        if action is None:
            raise NotFound("bulk_action: not found")
        if not bulk.may_undo(action, request.user):
            raise PermissionDenied("only the bulk action's author or an admin may undo it")
        assets = bulk.undo(action, request.user)
        return Response({"bulk_action": action.pk, "undone": len(assets), "assets": assets})


class UndoAPI(ScopedAPIView):
    """Undo the caller's most recent label in the taxonomy (the one before it becomes current)."""

    @extend_schema(
        request=inline_serializer("UndoRequest", {"before": serializers.IntegerField(
            required=False, min_value=1, help_text="undo your last label older than this label id (the `refused` "
                                                    "of a 409), to go on past one a colleague changed")}),
        responses={
            200: inline_serializer("UndoResult", {"undone": serializers.IntegerField(help_text="the asset whose label was undone")}),
            404: OpenApiResponse(description="nothing of yours to undo"),
            409: OpenApiResponse(description="your last label was changed by someone else since; nothing was undone "
                                             "({detail, refused: that label's id})")})
    def post(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        before = request.data.get("before") if hasattr(request.data, "get") else None
        if before is not None and not is_id(before):
            raise ValidationError({"before": ["a label id expected"]})
        try:
            label = labels.undo_last(self.taxonomy, request.user, before=before)
        except labels.UndoRefused as refused:  # a colleague changed it since: as on the review page
            return Response({"detail": str(refused), "refused": refused.label_id}, status=status.HTTP_409_CONFLICT)
        if label is None:
            raise NotFound("nothing of yours to undo")
        return Response({"undone": label.asset_id})


def _asset_ids(request: Request, name: str) -> list[int]:
    """A comma-separated list of asset ids in ?name=, or a 400 naming it."""
    try:
        ids = asset_id_list(request.query_params.get(name) or "")
    except ValueError as exc:
        raise ValidationError({name: [str(exc)]}) from None
    if len(ids) > MAX_EXCLUDE:
        raise ValidationError({name: [f"at most {MAX_EXCLUDE} asset ids"]})
    return ids


class QueueAPI(ScopedAPIView):
    """The next assets to review, most uncertain first. An operator's items are leased to them
    for a while, so operators working side by side are not shown the same assets."""

    @extend_schema(
        parameters=[
            OpenApiParameter("order", str, enum=list(queue.ORDERS), description=(
                "uncertain (default): least sure first; confident: most sure first; audit: a random sample of the "
                "unlabeled images the live model scored (none without a live model), blind (without the "
                "suggestion), each recorded as drawn; label them with audit=true and the models endpoint's `audit` "
                "estimates how often the live model is right on the library (what is left unanswered widens it)")),
            OpenApiParameter("limit", int, description=f"1..{queue.MAX_BATCH}"),
            OpenApiParameter("exclude", str, description="comma-separated asset ids already on screen "
                                                         "(their leases are renewed)"),
            OpenApiParameter("skipped", str, description="comma-separated asset ids passed on: left out, and "
                                                         "their leases are left to lapse so colleagues get them"),
        ],
        responses=QueueItemSerializer(many=True),
    )
    def get(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        order = request.query_params.get("order") or "uncertain"
        if order not in queue.ORDERS:
            raise ValidationError({"order": [f"must be one of {', '.join(queue.ORDERS)}"]})
        limit = int_param(request, "limit", 1, queue.MAX_BATCH) or 10
        exclude, skipped = _asset_ids(request, "exclude"), _asset_ids(request, "skipped")
        if len(exclude) + len(skipped) > MAX_EXCLUDE:
            raise ValidationError({"exclude": [f"at most {MAX_EXCLUDE} asset ids with skipped"]})
        leases = self.role in (Role.OPERATOR, Role.ADMIN)
        items = queue.review_batch(self.taxonomy, order=order, limit=limit, exclude=exclude, skipped=skipped,
                                   user=request.user if leases else None)
        return Response(QueueItemSerializer(items, many=True, context={"request": request}).data)
