"""Per-taxonomy dashboard (plots), its progress poll, and streamed export downloads."""
from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from .models import ModelVersion, Role
from .permissions import RANK, taxonomy_view
from .services import dashboard as dashboard_service
from .services import exporting, rollback


@require_safe
@taxonomy_view()
def dashboard(request: HttpRequest) -> HttpResponse:
    taxonomy = request.taxonomy
    is_admin = request.role == Role.ADMIN
    data = dashboard_service.build(taxonomy)
    # newest first, for the table only (the plots' JSON holds them all once)
    recent = [dict(v) for v in data["versions"][::-1][:dashboard_service.RECENT_VERSIONS]]
    if is_admin:  # the "Make live" buttons, and why a version can't be on the disabled ones
        versions = ModelVersion.objects.in_bulk([v["id"] for v in recent])
        for row in recent:
            row["cannot_go_live"] = rollback.why_not(taxonomy, versions[row["id"]])
    return render(
        request,
        "labeling/dashboard.html",
        {
            "client": request.client,
            "taxonomy": taxonomy,
            "is_admin": is_admin,
            "can_label": RANK[request.role] >= RANK[Role.OPERATOR],
            "kinds": exporting.KINDS,
            "data": data,
            "recent_versions": recent,
            "progress": dashboard_service.progress(taxonomy, include_imports=is_admin),
        },
    )


@require_safe
@taxonomy_view()
def progress_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dashboard_service.progress(request.taxonomy, include_imports=request.role == Role.ADMIN))


@require_safe
@taxonomy_view()
def export(request: HttpRequest, kind: str) -> HttpResponse:
    if kind not in exporting.KINDS:
        raise Http404("No such export")
    return exporting.response(request.taxonomy, kind, labeled_only=request.GET.get("all") not in ("1", "true"))
