"""Private media: images and thumbnails go out only to members of the asset's client."""
from __future__ import annotations

import mimetypes

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from .models import Asset
from .permissions import get_asset


def _send(request: HttpRequest, asset: Asset, field: str) -> HttpResponse:
    f = getattr(asset, field)
    if not f:
        raise Http404("No file")
    if settings.TAGLOOP_SENDFILE_HEADER:
        # Let nginx (X-Accel-Redirect) or Apache (X-Sendfile) stream it after our check.
        response = HttpResponse(content_type=mimetypes.guess_type(f.name)[0] or "application/octet-stream")
        response[settings.TAGLOOP_SENDFILE_HEADER] = settings.TAGLOOP_SENDFILE_PREFIX + f.name
    else:
        try:
            response = FileResponse(f.open("rb"))
        except FileNotFoundError:
            raise Http404("File missing")
    # Private to the logged-in user; browsers may still cache it, proxies may not.
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_safe
@login_required
def asset_image(request: HttpRequest, asset_id: int) -> HttpResponse:
    return _send(request, get_asset(request.user, asset_id), "file")


@require_safe
@login_required
def asset_thumb(request: HttpRequest, asset_id: int) -> HttpResponse:
    asset = get_asset(request.user, asset_id)
    return _send(request, asset, "thumbnail" if asset.thumbnail else "file")
