"""Clients, taxonomies and tags. Everyone in a client reads; only its admins write."""
from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ..models import Label, Membership, Role, Tag, Taxonomy
from .base import ScopedAPIView, get_or_404
from .serializers import ClientSerializer, TagSerializer, TaxonomySerializer


class ClientListAPI(APIView):
    """The clients the caller belongs to, with the caller's role in each."""

    @extend_schema(responses=ClientSerializer(many=True))
    def get(self, request: Request) -> Response:
        rows = Membership.objects.filter(user=request.user).select_related("client").order_by("client__name")
        return Response(
            ClientSerializer([{"slug": m.client.slug, "name": m.client.name, "role": m.role} for m in rows], many=True).data
        )


class TaxonomyListAPI(ScopedAPIView):
    """The client's taxonomies. POST (admins) creates one: ``single`` or ``multi`` label."""

    write_role = Role.ADMIN

    @extend_schema(responses=TaxonomySerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        rows = Taxonomy.objects.filter(client=self.client).select_related("live_model").order_by("name")
        return Response(TaxonomySerializer(rows, many=True).data)

    @extend_schema(request=TaxonomySerializer, responses={201: TaxonomySerializer})
    def post(self, request: Request, slug: str) -> Response:
        serializer = TaxonomySerializer(data=request.data, context={"client": self.client})
        serializer.is_valid(raise_exception=True)
        serializer.save(client=self.client)
        return Response(serializer.data, status=status.HTTP_201_CREATED)


class TaxonomyDetailAPI(ScopedAPIView):
    """One taxonomy. PATCH (admins): name, retrain threshold, and ``kind`` while it has no labels or
    models yet. DELETE only while it has no labels."""

    write_role = Role.ADMIN

    @extend_schema(responses=TaxonomySerializer)
    def get(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        return Response(TaxonomySerializer(self.taxonomy).data)

    @extend_schema(request=TaxonomySerializer, responses=TaxonomySerializer)
    def patch(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        serializer = TaxonomySerializer(self.taxonomy, data=request.data, partial=True, context={"client": self.client})
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        # Deleting throws away every label and model of the taxonomy; refuse while it has labels.
        # The row lock orders this against a label being saved: the label's insert holds a key
        # share on the taxonomy row until it commits (so the check below sees it), or, if the
        # lock came first, the insert waits and then fails on the deleted row. Never both.
        with transaction.atomic():
            Taxonomy.objects.select_for_update().filter(pk=self.taxonomy.pk).first()
            if Label.objects.filter(taxonomy=self.taxonomy).exists():
                return Response({"detail": "the taxonomy has labels; it can't be deleted"}, status=status.HTTP_409_CONFLICT)
            self.taxonomy.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class TagListAPI(ScopedAPIView):
    """The taxonomy's tags, retired ones included. POST (admins) adds one, optionally under a ``parent``."""

    write_role = Role.ADMIN

    @extend_schema(responses=TagSerializer(many=True))
    def get(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        rows = Tag.objects.filter(taxonomy=self.taxonomy).select_related("parent")
        return Response(TagSerializer(rows, many=True).data)

    @extend_schema(request=TagSerializer, responses={201: TagSerializer})
    def post(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        serializer = TagSerializer(data=request.data, context={"taxonomy": self.taxonomy})
        serializer.is_valid(raise_exception=True)
        with transaction.atomic():
            serializer.save(taxonomy=self.taxonomy)
        return Response(serializer.data, status=status.HTTP_201_CREATED)


class TagDetailAPI(ScopedAPIView):
    """PATCH: rename, move or retire a tag (``retired: true``: its labels stay). DELETE: only a
    tag nothing uses yet (a typo, a test); one in use answers 409 and is to be retired."""

    write_role = Role.ADMIN

    def tag(self, tag_id: int) -> Tag:
        return get_or_404(Tag.objects.filter(taxonomy=self.taxonomy), pk=tag_id)

    @extend_schema(responses=TagSerializer)
    def get(self, request: Request, slug: str, taxonomy_id: int, tag_id: int) -> Response:
        return Response(TagSerializer(self.tag(tag_id)).data)

    @extend_schema(request=TagSerializer, responses=TagSerializer)
    def patch(self, request: Request, slug: str, taxonomy_id: int, tag_id: int) -> Response:
        serializer = TagSerializer(self.tag(tag_id), data=request.data, partial=True, context={"taxonomy": self.taxonomy})
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data)

    @extend_schema(responses={204: None, 409: OpenApiResponse(description="the tag is used by labels, models or "
                                                                          "child tags: retire it instead")})
    def delete(self, request: Request, slug: str, taxonomy_id: int, tag_id: int) -> Response:
        with transaction.atomic():
            # Locked, so two deletes (or a delete and a rename) don't interleave; a label saved in
            # the same instant is the rare race the admin's delete has as well.
            tag = self.tag(tag_id)
            Tag.objects.select_for_update().filter(pk=tag.pk).first()
            if tag.in_use():
                return Response({"detail": f"'{tag.path}' is used by labels, models or child tags, so it can't be "
                                           "deleted: retire it instead (PATCH retired: true; its labels stay)"},
                                status=status.HTTP_409_CONFLICT)
            tag.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
