"""Request body parsing with a bound on JSON bodies.

DRF's JSONParser reads the raw request stream, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE (which
guards ``request.body`` and form fields) never applies to it: without this, any operator could
post a JSON body of any size and have it read and parsed in memory.
"""
from __future__ import annotations

import io

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.parsers import JSONParser

from ..services.images import size_text


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "request body too large"


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and stream is not None:
            data = stream.read(limit + 1)  # one byte more tells "over" from "exactly at" the limit
            if len(data) > limit:
                raise PayloadTooLarge({"body": [f"JSON body over {size_text(limit)}"]})
            stream = io.BytesIO(data)
        return super().parse(stream, media_type, parser_context)
