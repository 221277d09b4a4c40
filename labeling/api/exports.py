"""Streamed exports over the API (the same service as the dashboard's download links)."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request

from ..services import exporting
from .base import ScopedAPIView


class AnyAccept(BaseContentNegotiation):
    """The export is a file (CSV, ZIP...) whatever the Accept header says; errors stay JSON."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ExportAPI(ScopedAPIView):
    """Download the taxonomy's labels: ``csv``, ``json`` (asset, tags, probabilities, who, model
    version), ``coco`` (COCO-style classification JSON) or ``zip`` (images in one folder per tag)."""

    content_negotiation_class = AnyAccept

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=list(exporting.KINDS)),
            OpenApiParameter("all", bool, description="csv/json: include unlabeled assets too (coco and zip "
                             "always hold the labeled ones only)"),
        ],
        # one media type per kind, as exporting.CONTENT_TYPES serves them
        responses={(200, media): OpenApiTypes.BINARY for media in sorted(set(exporting.CONTENT_TYPES.values()))},
    )
    def get(self, request: Request, slug: str, taxonomy_id: int, kind: str):
        if kind not in exporting.KINDS:
            raise NotFound(f"kind: one of {', '.join(exporting.KINDS)}")
        raw = (request.query_params.get("all") or "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise ValidationError({"all": ["true or false"]})
        return exporting.response(self.taxonomy, kind, labeled_only=raw in ("false", "0"))
