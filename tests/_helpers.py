"""Plain helpers shared by several test modules (fixtures live in conftest.py).

Imported by test modules only, after pytest-django has set Django up; the model import is
still deferred so conftest.py can import this module at any time.
"""
from __future__ import annotations

import hashlib
import io
import time
from typing import TYPE_CHECKING, Callable

from PIL import Image

if TYPE_CHECKING:
    from labeling.models import Asset


def png_bytes(seed: int, size: int = 24) -> bytes:
    im = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def make_asset(client, seed: int, name: str | None = None, data: bytes | None = None, sha: str | None = None) -> Asset:
    from django.core.files.base import ContentFile

    from labeling.models import Asset

    data = data if data is not None else png_bytes(seed)
    asset = Asset(
        client=client, original_name=name or f"img-{seed}.png", sha256=sha or hashlib.sha256(data + str(seed).encode()).hexdigest(),
        byte_size=len(data), width=24, height=24, format="PNG",
    )
    asset.file.save("x.png", ContentFile(data), save=False)
    asset.save()
    return asset


def wait_for(predicate: Callable[[], object], timeout: float = 10.0):
    """Poll the database until the browser's request has landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the database")


def api(user=None, token: bool = False):
    """A DRF test client logged in as `user`: by a real token, or forced (session-less)."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    c = APIClient()
    if user is not None and token:
        c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    elif user is not None:
        c.force_authenticate(user)
    return c
