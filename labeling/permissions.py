"""The one place that answers "may this user do X in this client".

Pages, JSON endpoints and media all go through these helpers. Another client's pages, ids
and slugs are a 404, never a 403, so they leak nothing. A member of the client whose role is
too low for a page gets a 403 that says which role it needs (their own client: nothing leaks,
and "no such client" for a page linked from their own client's home would only confuse).
"""
from __future__ import annotations

from functools import wraps
from typing import Callable

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest

from .models import Asset, Client, Membership, Role, Taxonomy

# What each role may do; a role implies every right of the roles below it.
RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def role_in(user, client: Client) -> str | None:
    if not user.is_authenticated:
        return None
    m = Membership.objects.filter(user=user, client=client).only("role").first()
    return m.role if m else None


def real_user(user):
    """The user to record as the author of a change: None for anonymous or missing users."""
    return user if user is not None and user.is_authenticated else None


def has_role(user, client: Client, at_least: str = Role.VIEWER) -> bool:
    role = role_in(user, client)
    return role is not None and RANK[role] >= RANK[at_least]


def clients_of(user):
    return Client.objects.filter(memberships__user=user).order_by("name")


def get_client(user, slug: str, at_least: str = Role.VIEWER) -> Client:
    client = Client.objects.filter(slug=slug).first()
    role = role_in(user, client) if client is not None else None
    if role is None:
        raise Http404("No such client")
    if RANK[role] < RANK[at_least]:
        raise PermissionDenied(f"This page is for {Role(at_least).label.lower()}s of {client.name}; "
                               f"your role there is {Role(role).label.lower()}.")
    return client


def get_taxonomy(user, slug: str, taxonomy_id: int, at_least: str = Role.VIEWER) -> Taxonomy:
    client = get_client(user, slug, at_least)
    taxonomy = Taxonomy.objects.filter(client=client, pk=taxonomy_id).select_related("client", "live_model").first()
    if taxonomy is None:
        raise Http404("No such taxonomy")
    return taxonomy


def get_asset(user, asset_id: int, at_least: str = Role.VIEWER) -> Asset:
    asset = Asset.objects.filter(pk=asset_id).select_related("client").first()
    if asset is None or not has_role(user, asset.client, at_least):
        raise Http404("No such asset")
    return asset


def client_view(at_least: str = Role.VIEWER) -> Callable:
    """Decorator for views under /c/<slug>/...: resolves request.client or 404s."""

    def decorator(view: Callable) -> Callable:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, slug: str, *args, **kwargs):
            request.client = get_client(request.user, slug, at_least)
            request.role = role_in(request.user, request.client)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def taxonomy_view(at_least: str = Role.VIEWER) -> Callable:
    """Decorator for views under /c/<slug>/t/<taxonomy_id>/...: sets request.taxonomy."""

    def decorator(view: Callable) -> Callable:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, slug: str, taxonomy_id: int, *args, **kwargs):
            request.taxonomy = get_taxonomy(request.user, slug, taxonomy_id, at_least)
            request.client = request.taxonomy.client
            request.role = role_in(request.user, request.client)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
