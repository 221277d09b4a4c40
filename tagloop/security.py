"""Brute-force protection for every place a password is checked: the login form, the Django
admin login and the API's token endpoint share one per-(username, address) failure count."""
import hashlib

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from rest_framework import exceptions
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import Throttled
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle

LOCKED_OUT = "Too many failed logins for this username from your address. Try again in a few minutes."


class FailedLogins:
    """Failed passwords per (username, client address), counted in Django's cache for
    TAGLOOP_LOGIN_FAILURE_WINDOW seconds from the first one. At TAGLOOP_LOGIN_FAILURE_LIMIT the
    pair is refused without checking the password, so guessing stops; other addresses (the real
    user elsewhere) and other usernames go on. The address is DRF's: REMOTE_ADDR, or the
    TAGLOOP_NUM_PROXIES-th X-Forwarded-For entry from the right behind a proxy."""

    @staticmethod
    def key(request, username: str) -> str:
        who = f"{username.casefold()}\0{BaseThrottle().get_ident(request)}"
        return "tagloop:login-failures:" + hashlib.sha256(who.encode()).hexdigest()

    @classmethod
    def locked(cls, request, username: str) -> bool:
        limit = settings.TAGLOOP_LOGIN_FAILURE_LIMIT
        return limit > 0 and (cache.get(cls.key(request, username)) or 0) >= limit

    @classmethod
    def failed(cls, request, username: str) -> None:
        if settings.TAGLOOP_LOGIN_FAILURE_LIMIT > 0:
            key = cls.key(request, username)
            cache.add(key, 0, timeout=settings.TAGLOOP_LOGIN_FAILURE_WINDOW)
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr: this failure starts a new window
                cache.add(key, 1, timeout=settings.TAGLOOP_LOGIN_FAILURE_WINDOW)

    @classmethod
    def succeeded(cls, request, username: str) -> None:
        cache.delete(cls.key(request, username))


class LockoutMixin:
    """For AuthenticationForm and its admin variant: refuse a locked-out pair, count failures."""

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        request = self.request
        if request is None or not username:
            return super().clean()
        if FailedLogins.locked(request, username):
            raise ValidationError(LOCKED_OUT, code="locked_out")
        try:
            cleaned = super().clean()
        except ValidationError:
            FailedLogins.failed(request, username)
            raise
        FailedLogins.succeeded(request, username)
        return cleaned


class LoginForm(LockoutMixin, AuthenticationForm):
    pass


class AdminLoginForm(LockoutMixin, AdminAuthenticationForm):
    pass




# DRF's ObtainAuthToken, rate limited per address (per user when the caller is already
# authenticated) and under the same lockout as the login form. The docstring is the API's.
class ObtainToken(ObtainAuthToken):
    """Exchange a username and password for the user's API token. Repeated failed passwords
    for a username from one address, or too many requests, are answered 429 (see Retry-After)."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_token"

    def post(self, request, *args, **kwargs):
        data = request.data
        username = data.get("username") if hasattr(data, "get") else None
        username = username if isinstance(username, str) else ""
        if username and FailedLogins.locked(request, username):
            raise Throttled(wait=settings.TAGLOOP_LOGIN_FAILURE_WINDOW, detail=LOCKED_OUT)
        serializer = self.get_serializer(data=data)
        if not serializer.is_valid():
            if username:
                FailedLogins.failed(request, username)
            raise exceptions.ValidationError(serializer.errors)
        FailedLogins.succeeded(request, username)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})


class ContentSecurityPolicy:
    """Sends settings.TAGLOOP_CSP on every response that has none of its own. Pages load their
    scripts from /static/ only (no inline script or handler), so an injected <script> or
    onerror= does not run; inline styles stay allowed (plotly draws with them)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.TAGLOOP_CSP and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = settings.TAGLOOP_CSP
        return response
