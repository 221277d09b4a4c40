"""Browser import: an admin uploads files, folders or ZIPs; a worker imports them.

The request only stages the files (streamed to disk, chunk by chunk) and enqueues the job;
decoding, thumbnails and embedding happen in the worker. The job page polls the JSON endpoint.
"""
from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe, require_http_methods

from .models import ImportJob, Role, Taxonomy
from .permissions import client_view
from .services import images, importing
from .services.images import max_upload_bytes, max_upload_files
from .views import parse_id


class UploadError(ValueError):
    """What is wrong with an upload, in words for the form."""


def _csrf_refusal(request: HttpRequest) -> HttpResponse | None:
    """The CSRF middleware's own check, run by the view once the upload's size is known to be
    acceptable (the middleware would parse, and store, the whole body before the view runs).
    None when the request passes; raises UploadError for more files than Django parses."""
    try:
        request.FILES  # parsed here (the check reads request.POST anyway), bounded by the size check
    except TooManyFilesSent:
        raise UploadError(f"too many files; at most {max_upload_files()} at once — send a ZIP instead") from None
    return CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})


def _refuse_too_large(request: HttpRequest) -> None:
    try:
        length = images.declared_length(request.META)
    except ValueError:
        raise UploadError("the request's Content-Length is not a number") from None
    if length > max_upload_bytes():
        raise UploadError(f"upload too large ({images.size_text(length)}); at most {images.size_text(max_upload_bytes())} at once — "
                          "split it, or ask an operator to run the import_assets command")


def _uploaded_files(request: HttpRequest) -> list[tuple]:
    """(UploadedFile, relative path) pairs. Folder picks send their paths in a hidden field that
    the page fills from webkitRelativePath (Django keeps only the base name of uploads)."""
    loose, folder = request.FILES.getlist("files"), request.FILES.getlist("folder")
    try:
        paths = json.loads(request.POST.get("paths") or "[]")
    except ValueError:
        paths = []
    if not isinstance(paths, list) or len(paths) != len(folder):
        paths = [""] * len(folder)  # no usable paths: the files land in the root, unlabeled
    pairs = [(f, "") for f in loose] + [(f, str(p)) for f, p in zip(folder, paths, strict=True)]
    if not pairs:
        raise UploadError("choose at least one image, folder or ZIP file")
    if len(pairs) > max_upload_files():
        raise UploadError(f"too many files ({len(pairs)}); at most {max_upload_files()} at once — send a ZIP instead")
    return pairs


def _labels_taxonomy(request: HttpRequest) -> Taxonomy | None:
    raw = request.POST.get("taxonomy") or ""
    if not raw:
        return None
    pk = parse_id(raw)
    taxonomy = Taxonomy.objects.filter(client=request.client, pk=pk).first() if pk else None
    if taxonomy is None:
        raise UploadError("taxonomy: not a taxonomy of this client")
    return taxonomy


@require_http_methods(["GET", "POST"])
@csrf_exempt  # checked below, after the size: a too-big upload is refused without being stored
@client_view(at_least=Role.ADMIN)
def upload(request: HttpRequest) -> HttpResponse:
    client = request.client
    error = ""
    if request.method == "POST":
        try:
            _refuse_too_large(request)
            if (refused := _csrf_refusal(request)) is not None:
                return refused
            files = _uploaded_files(request)
            taxonomy = _labels_taxonomy(request)
            job = importing.stage_upload(client, files, user=request.user, labels_taxonomy=taxonomy)
        except UploadError as exc:
            error = str(exc)
        else:
            if not importing.enqueue(job):
                messages.warning(request, "Workers can't be reached right now; the import starts once they are.")
            return redirect("import_job", slug=client.slug, job_id=job.pk)
    context = {
        "client": client,
        "taxonomies": Taxonomy.objects.filter(client=client).order_by("name"),
        "error": error,
        "max_bytes": images.size_text(max_upload_bytes()),
        "max_files": max_upload_files(),
        "recent": ImportJob.objects.filter(client=client).order_by("-id")[:10],
    }
    return render(request, "labeling/import_upload.html", context, status=400 if error else 200)


def _job(request: HttpRequest, job_id: int) -> ImportJob:
    return get_object_or_404(ImportJob.objects.select_related("labels_from_folders"), pk=job_id, client=request.client)


@require_safe
@client_view(at_least=Role.ADMIN)
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _job(request, job_id)
    # Rows written before names were sanitised may hold lone surrogates, which no page can encode.
    job.errors = [importing.report(e.get("kind", "failed"), e.get("file", ""), e.get("error", "")) for e in job.errors]
    context = {"client": request.client, "job": job, "s": importing.summary(job)}
    return render(request, "labeling/import_job.html", context)


@require_safe
@client_view(at_least=Role.ADMIN)
def job_json(request: HttpRequest, job_id: int) -> JsonResponse:
    return JsonResponse(importing.summary(_job(request, job_id)))
