"""What every API view shares: client/taxonomy scoping by role, and keyset cursors.

Scoping goes through labeling.permissions (the one place that decides): another client's
slug, taxonomy or object is a 404, exactly like a missing one; a member whose role is too low
gets 403 with the role it needs.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from functools import lru_cache
from typing import Any, Sequence

from rest_framework import serializers
from django.conf import settings
from django.core.exceptions import TooManyFilesSent
from django.db import IntegrityError
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.views import APIView

from ..models import Client, Role, Taxonomy
from ..permissions import RANK, get_client, get_taxonomy, role_in
from ..services import labels, members

MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_ID = 2**63 - 1  # bigint: a larger id would overflow the database driver (a 500, not a 404)


def is_id(value) -> bool:
    """A JSON id: bool is an int subclass, and true/false are not ids."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


def asset_id_list(raw: str) -> list[int]:
    """Comma-separated asset ids (the review queue's exclude / skipped), or ValueError saying
    what is wrong, for the caller to put under the field's name."""
    try:
        ids = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise ValueError("comma-separated asset ids expected") from None
    if not all(0 < i <= MAX_ID for i in ids):
        raise ValueError(f"asset ids are whole numbers from 1 to {MAX_ID}")
    return ids


class ScopedAPIView(APIView):
    # Views under /clients/<slug>/[taxonomies/<taxonomy_id>/]: sets self.client, self.role and
    # self.taxonomy before the handler runs. ``read_role`` guards safe methods, ``write_role``
    # the others. (A comment, not a docstring: OpenAPI would show it on every endpoint that
    # has no docstring of its own.)

    read_role: str = Role.VIEWER
    write_role: str = Role.OPERATOR
    client: Client
    taxonomy: Taxonomy | None = None
    role: str
    upload_field = "files"  # the multipart field named when a request holds too many files

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication first: anonymous is 401
        if "taxonomy_id" in kwargs:
            self.taxonomy = get_taxonomy(request.user, kwargs["slug"], kwargs["taxonomy_id"])
            self.client = self.taxonomy.client
        else:
            self.client = get_client(request.user, kwargs["slug"])
        self.role = role_in(request.user, self.client)
        needed = self.read_role if request.method in SAFE_METHODS else self.write_role
        if RANK[self.role] < RANK[needed]:
            raise PermissionDenied(f"your role ({self.role}) may not do this; it takes {needed} or above")

    def handle_exception(self, exc: Exception):
        # Services phrase input errors as "field: what is wrong"; answer them as field errors.
        if isinstance(exc, (labels.LabelError, members.MemberError)) and not isinstance(exc, labels.LabelConflict):
            exc = field_error(str(exc))
        elif isinstance(exc, TooManyFilesSent):  # Django's own cap, hit while parsing the body
            exc = ValidationError({self.upload_field: [
                f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files in one request; send a ZIP instead"]})
        elif isinstance(exc, IntegrityError):
            # A unique name checked a moment before was taken by a concurrent request.
            exc = Conflict()
        return super().handle_exception(exc)


class Conflict(APIException):
    status_code = 409
    default_detail = "a concurrent request changed the same thing (e.g. took this name); reload and try again"
    default_code = "conflict"


def field_error(message: str) -> ValidationError:
    field, sep, rest = message.partition(":")
    if not sep or " " in field.strip():
        return ValidationError({"non_field_errors": [message]})
    return ValidationError({field.strip(): [rest.strip()]})


def get_or_404(queryset, **lookup):
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise NotFound()
    return obj


# --- keyset cursors -----------------------------------------------------------------------
# An opaque token holding the last row's sort key. The next page is a range scan on an index
# from that key: the same cost at page 1 and page 20,000, unlike OFFSET.


def encode_cursor(values: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, keys: dict[str, type]) -> dict | None:
    if not raw:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        raise ValidationError({"cursor": ["not a cursor this API gave out"]}) from None
    if not isinstance(values, dict) or set(values) != set(keys):
        raise ValidationError({"cursor": ["not a cursor for this listing"]})
    for key, kind in keys.items():
        value = values[key]
        ok = isinstance(value, kind) and not isinstance(value, bool) and 0 <= value <= MAX_ID
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise ValidationError({"cursor": ["not a cursor for this listing"]})
    return values


def page_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw in (None, ""):
        return DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({"limit": ["a whole number expected"]}) from None
    if not 1 <= value <= MAX_PAGE:
        raise ValidationError({"limit": [f"must be between 1 and {MAX_PAGE}"]})
    return value


def paged(request: Request, rows: Sequence, limit: int, key) -> tuple[list, str | None]:
    """rows holds up to limit + 1 items; the extra one only says that a next page exists."""
    rows = list(rows)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(key(rows[-1]))


@lru_cache(maxsize=None)
def page_serializer(item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """{"results": [item...], "next_cursor": str|null}, named after the item for the schema."""
    name = item.__name__.removesuffix("Serializer") + "PageSerializer"
    return type(
        name,
        (serializers.Serializer,),
        {
            "results": item(many=True),
            "next_cursor": serializers.CharField(allow_null=True, help_text="pass as ?cursor= for the next page"),
        },
    )


def _number_param(request: Request, name: str, cast: type, what: str, minimum, maximum):
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = cast(raw)
    except ValueError:
        raise ValidationError({name: [f"{what} expected"]}) from None
    if not minimum <= value <= maximum:  # also refuses nan
        raise ValidationError({name: [f"must be between {minimum} and {maximum}"]})
    return value


def int_param(request: Request, name: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    return _number_param(
        request, name, int, "a whole number", 0 if minimum is None else minimum, MAX_ID if maximum is None else maximum
    )


def float_param(request: Request, name: str, minimum: float, maximum: float) -> float | None:
    return _number_param(request, name, float, "a number", minimum, maximum)
