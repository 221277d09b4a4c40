"""What a script gets for an API path that matches no endpoint: JSON, never a web page.

A POST to ``.../labels`` (no slash) met Django's APPEND_SLASH: a 500 with DEBUG on, and with
it off a 301 that HTTP clients follow as a GET, so the label was dropped while the client saw
a 200. API paths without their slash get a 308 instead, which clients follow with the same
method and body. Other misses (an unknown path, an id of 19 digits) get a JSON 404.
"""
from __future__ import annotations

from typing import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseRedirectBase
from django.urls import is_valid_path

API_PREFIX = "/api/"


class PermanentRedirectSameMethod(HttpResponseRedirectBase):
    status_code = 308


class ApiPaths:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if not path.startswith(API_PREFIX):
            return self.get_response(request)
        urlconf = getattr(request, "urlconf", None)
        if not path.endswith("/") and not is_valid_path(path, urlconf) and is_valid_path(path + "/", urlconf):
            return PermanentRedirectSameMethod(request.get_full_path(force_append_slash=True))
        response = self.get_response(request)
        # a DRF view's own 404 (it has .data) keeps its message, also when rendered as HTML
        if response.status_code == 404 and not hasattr(response, "data"):
            return JsonResponse({"detail": "Not found."}, status=404)
        return response
