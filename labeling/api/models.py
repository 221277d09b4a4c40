"""The model side: batch predictions with the live model, model versions with their metrics,
training runs (start one, follow its progress)."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from ml.preprocess import load_rgb

from ..models import ModelVersion, Role, Suggestion, Taxonomy, TrainingRun
from ..services import audit, images, rollback, suggesting, training, vectors
from ..services.labels import retired_among, suggested_tag_ids
from ..services.suggesting import ranked_tags
from .assets import refuse_large_body
from .base import ScopedAPIView, get_or_404
from .serializers import (
    ModelVersionDetailSerializer, ModelVersionSerializer, PredictRequestSerializer, PredictResultSerializer,
    TrainingRunSerializer,
)

MAX_PREDICT_IMAGES = 64
MAX_PREDICT_BYTES = 10 * 1024**2  # per image
MAX_RUNS_LISTED = 100


class NoLiveModel(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "this taxonomy has no live model yet: label some assets and train one"


class ModelFileMissing(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = ("the live model's file is missing on this server: the web process and the train worker "
                      "must share TAGLOOP_VAR (README, Production)")


class PredictAPI(ScopedAPIView):
    """Top-n tags for up to 64 uploaded images (multipart field ``images``) from the live model,
    with its keypoint matches when it was trained with local matching. Nothing is stored."""

    read_role = write_role = Role.OPERATOR
    upload_field = "images"

    @extend_schema(request={"multipart/form-data": PredictRequestSerializer}, responses={
        200: PredictResultSerializer, 409: OpenApiResponse(description="no live model yet, or one of another backbone"),
        503: OpenApiResponse(description="the live model's file is not on this server (TAGLOOP_VAR not shared)")})
    def post(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        refuse_large_body(request, MAX_PREDICT_IMAGES * MAX_PREDICT_BYTES + 1024**2, "images")
        data = {"images": request.data.getlist("images") if hasattr(request.data, "getlist") else request.data.get("images")}
        top = request.data.get("top", request.query_params.get("top"))  # a form field, or ?top= as for suggestions
        if top is not None:
            data["top"] = top
        serializer = PredictRequestSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        files, top = serializer.validated_data["images"], serializer.validated_data["top"]
        if len(files) > MAX_PREDICT_IMAGES:
            raise ValidationError({"images": [f"at most {MAX_PREDICT_IMAGES} images per request"]})
        errors = {}
        for i, f in enumerate(files):
            if f.size > MAX_PREDICT_BYTES:
                errors[i] = [f"over {images.size_text(MAX_PREDICT_BYTES)}"]
                continue
            try:
                images.decode(f)  # the import's checks: format, pixel bomb, aspect ratio
            except (images.ImageError, ValueError, OSError) as exc:
                errors[i] = [str(exc)]
        if errors:
            raise ValidationError({"images": errors})
        live = self.taxonomy.live_model
        if live is None:
            raise NoLiveModel()
        embedder = vectors.get_embedder()
        if live.backbone != embedder.name and live.backbone != vectors.backbone_name():
            raise NoLiveModel(f"the live model was trained on {live.backbone}, this server embeds with {embedder.name}")
        pictures = []
        for i, f in enumerate(files):
            f.seek(0)
            try:
                pictures.append(load_rgb(f, draft_size=embedder.draft_size))
            except (ValueError, OSError) as exc:
                errors[i] = [str(exc)]
        if errors:
            raise ValidationError({"images": errors})
        try:
            P = suggesting.predict(live, embedder.embed_images(pictures), files)
        except FileNotFoundError:
            # the train worker wrote it where this server cannot see (README: shared TAGLOOP_VAR)
            raise ModelFileMissing() from None
        tags = {t.pk: t for t in self.taxonomy.tags.select_related("parent")}
        retired = retired_among(tags)
        # as the library's rows are stored: retired tags at 0, single-label renormalised over the rest
        P = suggesting.without_retired(P, live.tag_ids, retired, self.taxonomy.multilabel)
        predictions = [
            {"index": i, "name": f.name or "", "tags": ranked_tags(live.tag_ids, P[i], tags, top),
             # what the app would suggest: top-1, or every tag over its tuned threshold (multi-label)
             "suggested": sorted(suggested_tag_ids(self.taxonomy, Suggestion(model_version=live, probs=P[i].tolist()),
                                                   retired))}
            for i, f in enumerate(files)
        ]
        body = {"model_version": live.pk, "version": live.version, "predictions": predictions}
        return Response(PredictResultSerializer(body).data)


class ModelVersionListAPI(ScopedAPIView):
    """Every trained model version of the taxonomy, newest first, with its held-out metrics and its
    audit (its suggestions checked on a random sample of the unlabeled library)."""

    @extend_schema(responses=ModelVersionSerializer(many=True))
    def get(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        rows = ModelVersion.objects.filter(taxonomy=self.taxonomy).select_related("taxonomy").order_by("-version")
        return Response(ModelVersionSerializer(rows, many=True, context={"audit": audit.by_version(self.taxonomy)}).data)


class ModelVersionDetailAPI(ScopedAPIView):
    """One model version: per-class precision / recall / F1, confusion matrix, 95 % intervals."""

    @extend_schema(responses=ModelVersionDetailSerializer)
    def get(self, request: Request, slug: str, taxonomy_id: int, version_id: int) -> Response:
        mv = get_or_404(ModelVersion.objects.filter(taxonomy=self.taxonomy).select_related("taxonomy"), pk=version_id)
        return Response(ModelVersionDetailSerializer(mv, context={"audit": audit.by_version(self.taxonomy)}).data)


class ModelVersionPromoteAPI(ScopedAPIView):
    """POST (admins): make this version live again, a rollback or a roll-forward (e.g. after a
    bulk action its live model learned from was undone). A worker scores the library with it and
    switches the live pointer; the job is a training run (trigger ``rollback``): poll it (202)."""

    write_role = Role.ADMIN

    @extend_schema(request=None, responses={
        202: TrainingRunSerializer,
        404: OpenApiResponse(description="no such version in this taxonomy"),
        409: OpenApiResponse(TrainingRunSerializer, description="a run is already active (that run), or the version "
                             "can't be made live ({detail}: already live, model file missing, another backbone)")})
    def post(self, request: Request, slug: str, taxonomy_id: int, version_id: int) -> Response:
        mv = get_or_404(ModelVersion.objects.filter(taxonomy=self.taxonomy), pk=version_id)
        if reason := rollback.why_not(self.taxonomy, mv):
            return Response({"detail": f"not started: {reason}"}, status=status.HTTP_409_CONFLICT)
        run = rollback.request(self.taxonomy, mv, request.user)
        if run is None:
            return active_run_conflict(self.taxonomy)
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


def active_run_conflict(taxonomy: Taxonomy) -> Response:
    """409 with the run that holds the taxonomy's one slot (the database allows one queued or
    running run per taxonomy): the caller follows that one instead."""
    active = TrainingRun.objects.filter(taxonomy=taxonomy, state__in=TrainingRun.ACTIVE).first()
    return Response(TrainingRunSerializer(active).data if active else {"detail": "a run is already active"},
                    status=status.HTTP_409_CONFLICT)


class TrainingRunListAPI(ScopedAPIView):
    """GET: recent runs. POST (admins): retrain now, whatever the label counter says (202)."""

    write_role = Role.ADMIN

    @extend_schema(responses=TrainingRunSerializer(many=True))
    def get(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        rows = TrainingRun.objects.filter(taxonomy=self.taxonomy).order_by("-id")[:MAX_RUNS_LISTED]
        return Response(TrainingRunSerializer(rows, many=True).data)

    @extend_schema(request=None, responses={
        202: TrainingRunSerializer,
        409: OpenApiResponse(TrainingRunSerializer, description="a run is already active (that run), or the "
                             "labels cannot make a model yet ({detail}: why, e.g. labels of one tag only)")})
    def post(self, request: Request, slug: str, taxonomy_id: int) -> Response:
        if not self._active() and (reason := training.not_ready(self.taxonomy)):
            return Response({"detail": f"not started: {reason}"}, status=status.HTTP_409_CONFLICT)
        run = training.request_run(self.taxonomy, trigger="api", force=True)
        if run is None:
            return active_run_conflict(self.taxonomy)
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    def _active(self) -> TrainingRun | None:
        return TrainingRun.objects.filter(taxonomy=self.taxonomy, state__in=TrainingRun.ACTIVE).first()


class TrainingRunDetailAPI(ScopedAPIView):
    """One run: state, progress (0..1), message, metrics once finished. Poll it."""

    @extend_schema(responses=TrainingRunSerializer)
    def get(self, request: Request, slug: str, taxonomy_id: int, run_id: int) -> Response:
        run = get_or_404(TrainingRun.objects.filter(taxonomy=self.taxonomy), pk=run_id)
        return Response(TrainingRunSerializer(run).data)
