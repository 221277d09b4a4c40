"""The OpenAPI schema's error answers. DRF answers every failure in one of two shapes, and a
client generated from the schema should know both without reading the prose:
``{"detail": "..."}`` (401, 403, 404, 409, 413, ...) and ``{"<field>": ["message", ...]}`` (400).
Operations declare their own 2xx and special cases; the common errors are added here."""
from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="what went wrong, in words")


FIELD_ERRORS = {
    "type": "object",
    "description": "field name (or non_field_errors) -> messages",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
}

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
BODIES = {"POST", "PUT", "PATCH"}


class TagloopSchema(AutoSchema):
    def _public(self) -> bool:
        # the token endpoint: no permission classes at all (DRF's ObtainAuthToken), or AllowAny
        permissions = self.view.get_permissions()
        return not permissions or any(isinstance(p, AllowAny) for p in permissions)

    def get_auth(self) -> list:
        return [] if self._public() else super().get_auth()

    def _get_response_bodies(self, direction: str = "response") -> dict:
        bodies = super()._get_response_bodies(direction)
        if direction != "response":
            return bodies
        common = {}
        if self.method in WRITES or self.get_override_parameters():
            common["400"] = OpenApiResponse(FIELD_ERRORS, description="bad input: each field with what is wrong")
        if not self._public():
            common["401"] = OpenApiResponse(ErrorSerializer, description="no token or session, or a wrong one")
            common["403"] = OpenApiResponse(ErrorSerializer, description="your role in this client may not do this")
        if "{" in self.path:
            common["404"] = OpenApiResponse(ErrorSerializer, description="no such object in a client of yours")
        if self.method in BODIES and self.get_request_serializer() is not None:
            common["413"] = OpenApiResponse(ErrorSerializer, description="request body too large")
        for code, response in common.items():
            bodies.setdefault(code, self._get_response_for_code(response, code, direction=direction))
        return bodies

    def get_operation_id(self) -> str:
        # A list endpoint that is not a DRF ListAPIView is named *_retrieve by default (e.g. the
        # labels list "clients_taxonomies_labels_retrieve"): say list when the answer is a page.
        operation_id = super().get_operation_id()
        if self.method == "GET" and operation_id.endswith("_retrieve") and self._answers_many():
            return operation_id[: -len("_retrieve")] + "_list"
        return operation_id

    def _answers_many(self) -> bool:
        response = self.get_response_serializers()
        response = response.get(200, response.get("200")) if isinstance(response, dict) else response
        if isinstance(response, serializers.ListSerializer):
            return True
        name = response.__name__ if isinstance(response, type) else type(response).__name__
        return name.endswith("PageSerializer")  # labeling.api.base.page_serializer
