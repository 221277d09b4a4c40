"""Private media: images and thumbnails go out only to members of the asset's client."""
from __future__ import annotations

import mimetypes
from functools import wraps
from typing import Callable

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from .models import Asset
from .permissions import get_asset
from .services import images


def session_or_token(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A logged-in browser, or an API client sending ``Authorization: Token ...``: the API's
    asset and queue answers link here, and a script holding a token must be able to follow
    those links. Anyone else is sent to the login page, as by ``login_required``."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated and request.headers.get("Authorization"):
            try:
                found = TokenAuthentication().authenticate(request)
            except AuthenticationFailed as exc:
                return JsonResponse({"detail": str(exc.detail)}, status=401)
            if found:
                request.user = found[0]
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapped


def _send(request: HttpRequest, storage: Storage, name: str) -> HttpResponse:
    if not name:
        raise Http404("No file")
    if settings.TAGLOOP_SENDFILE_HEADER:
        # Let nginx (X-Accel-Redirect) or Apache (X-Sendfile) stream it after our check.
        response = HttpResponse(content_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
        response[settings.TAGLOOP_SENDFILE_HEADER] = settings.TAGLOOP_SENDFILE_PREFIX + name
    else:
        try:
            response = FileResponse(storage.open(name, "rb"))
        except FileNotFoundError:
            raise Http404("File missing")
    # Private to the logged-in user; browsers may still cache it, proxies may not.
    response["Cache-Control"] = "private, max-age=3600"
    return response


def display_name_of(asset: Asset) -> str:
    """Storage name of the JPEG shown instead of an original browsers can't display (TIFF).
    Under the client's id, like the originals and thumbnails, so clients share no files."""
    return f"displays/{asset.client_id}/{asset.sha256[:2]}/{asset.sha256}.jpg"


def _displayable(asset: Asset) -> str:
    """Name of a file every browser shows as the thumbnail does: the original, or a JPEG
    rendition of it made once, on first view (so assets imported before this existed are
    covered too): for formats browsers can't show, and for rotated non-JPEGs."""
    if not asset.format or asset.format in images.ORIENTED_BY_BROWSERS:
        return asset.file.name
    # Remembered per content: otherwise every view of a PNG or WebP would read its header again.
    as_stored = f"tagloop:shown-as-stored:{asset.sha256}"
    if asset.format in images.BROWSER_FORMATS and cache.get(as_stored):
        return asset.file.name
    storage, name = asset.file.storage, display_name_of(asset)
    if storage.exists(name):
        return name
    try:
        with asset.file.open("rb") as original:
            if asset.format in images.BROWSER_FORMATS and not images.has_orientation(original):
                cache.set(as_stored, True, timeout=30 * 24 * 3600)
                return asset.file.name
            original.seek(0)
            rendition = images.display_jpeg(original)
    except FileNotFoundError:
        raise Http404("File missing")
    except images.ImageError:  # damaged since the import: the thumbnail still shows the picture
        return asset.thumbnail.name
    saved = storage.save(name, ContentFile(rendition))
    if saved != name:  # another request made it at the same time: keep one copy
        storage.delete(saved)
    return name


@require_safe
@session_or_token
def asset_image(request: HttpRequest, asset_id: int) -> HttpResponse:
    """What a browser can show; ?original=1 gives the stored bytes as imported (sha256 matches)."""
    asset = get_asset(request.user, asset_id)
    name = asset.file.name if request.GET.get("original") == "1" else _displayable(asset)
    return _send(request, asset.file.storage, name)


@require_safe
@session_or_token
def asset_thumb(request: HttpRequest, asset_id: int) -> HttpResponse:
    asset = get_asset(request.user, asset_id)
    field = asset.thumbnail if asset.thumbnail else asset.file
    return _send(request, field.storage, field.name)
