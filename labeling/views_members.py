"""The members page: a client admin adds people, changes their role, removes them."""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from .models import Membership, Role
from .permissions import client_view
from .services import members


def _page(request: HttpRequest, *, error: str = "", created: dict | None = None,
          form: dict | None = None) -> HttpResponse:
    context = {
        "client": request.client,
        "members": members.members(request.client),
        "roles": Role.choices,
        "error": error,
        "created": created,
        "form": form or {"role": Role.OPERATOR},
    }
    return render(request, "labeling/members.html", context, status=400 if error else 200)


@require_http_methods(["GET", "POST"])
@client_view(at_least=Role.ADMIN)
def member_list(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _page(request)
    form = {k: request.POST.get(k, "") for k in ("username", "email", "role")}
    try:
        membership, password = members.add_member(request.client, form["username"], form["role"], form["email"],
                                                 by=request.user)
    except members.MemberError as exc:
        return _page(request, error=str(exc), form=form)
    # Rendered, not redirected: the one-time password must not sit in a cookie or session.
    created = {"username": membership.user.username, "role": membership.get_role_display(),
               "password": password}
    response = _page(request, created=created)
    add_never_cache_headers(response)  # nor in any browser or proxy cache
    return response


@require_POST
@client_view(at_least=Role.ADMIN)
def member_update(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = get_object_or_404(Membership.objects.select_related("user", "client"),
                                   pk=membership_id, client=request.client)
    name = membership.user.username
    removed = request.POST.get("action") == "remove"
    try:
        if removed:
            members.remove_member(membership)
            messages.success(request, f"{name} no longer has access to {request.client.name}.")
        else:
            membership = members.change_role(membership, request.POST.get("role", ""))
            messages.success(request, f"{name} is now {membership.get_role_display().lower()}.")
    except members.MemberError as exc:
        return _page(request, error=str(exc))
    # Whoever removed or demoted themselves can no longer see this page.
    if membership.user_id == request.user.pk and (removed or membership.role != Role.ADMIN):
        return redirect("home")
    return redirect("members", slug=request.client.slug)
