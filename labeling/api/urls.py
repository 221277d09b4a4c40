"""/api/v1/: everything below a client lives under clients/<slug>/ (tenant in the path)."""
from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.urls import path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.exceptions import NotAuthenticated

from tagloop.security import ObtainToken

from . import assets, exports, labels, members, models, taxonomies


class IdConverter:
    """Like <int:>, but at most 18 digits: a larger number is a 404, never an overflow (500)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")


class DocsView(SpectacularSwaggerSplitView):
    """The API's docs page. Someone who is not logged in is a person in a browser here: the
    login page, then back, instead of a bare 401 (the schema itself still answers 401)."""

    def handle_exception(self, exc):
        if isinstance(exc, NotAuthenticated):
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)

C = "clients/<slug:slug>/"
T = C + "taxonomies/<id:taxonomy_id>/"

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    # the split view serves its start-up script as a file: the CSP allows no inline script
    path("docs/", DocsView.as_view(url_name="api_schema"), name="api_docs"),
    path("auth/token/", ObtainToken.as_view(), name="api_token"),  # rate limited, shared lockout
    path("clients/", taxonomies.ClientListAPI.as_view(), name="api_clients"),
    path(C + "members/", members.MemberListAPI.as_view(), name="api_members"),
    path(C + "members/<id:membership_id>/", members.MemberDetailAPI.as_view(), name="api_member"),
    path(C + "taxonomies/", taxonomies.TaxonomyListAPI.as_view(), name="api_taxonomies"),
    path(T, taxonomies.TaxonomyDetailAPI.as_view(), name="api_taxonomy"),
    path(T + "tags/", taxonomies.TagListAPI.as_view(), name="api_tags"),
    path(T + "tags/<id:tag_id>/", taxonomies.TagDetailAPI.as_view(), name="api_tag"),
    path(C + "assets/", assets.AssetListAPI.as_view(), name="api_assets"),
    path(C + "assets/<id:asset_id>/", assets.AssetDetailAPI.as_view(), name="api_asset"),
    path(C + "imports/<id:job_id>/", assets.ImportJobAPI.as_view(), name="api_import"),
    path(T + "assets/<id:asset_id>/history/", assets.AssetHistoryAPI.as_view(), name="api_asset_history"),
    path(T + "assets/<id:asset_id>/suggestions/", assets.SuggestionAPI.as_view(), name="api_suggestions"),
    path(T + "labels/", labels.LabelListAPI.as_view(), name="api_labels"),
    path(T + "labels/bulk/", labels.LabelBulkAPI.as_view(), name="api_labels_bulk"),
    path(T + "labels/bulk/<id:action_id>/undo/", labels.LabelBulkUndoAPI.as_view(), name="api_labels_bulk_undo"),
    path(T + "labels/undo/", labels.UndoAPI.as_view(), name="api_labels_undo"),
    path(T + "queue/", labels.QueueAPI.as_view(), name="api_queue"),
    path(T + "predict/", models.PredictAPI.as_view(), name="api_predict"),
    path(T + "models/", models.ModelVersionListAPI.as_view(), name="api_models"),
    path(T + "models/<id:version_id>/", models.ModelVersionDetailAPI.as_view(), name="api_model"),
    path(T + "models/<id:version_id>/promote/", models.ModelVersionPromoteAPI.as_view(), name="api_model_promote"),
    path(T + "runs/", models.TrainingRunListAPI.as_view(), name="api_runs"),
    path(T + "runs/<id:run_id>/", models.TrainingRunDetailAPI.as_view(), name="api_run"),
    path(T + "export/<str:kind>/", exports.ExportAPI.as_view(), name="api_export"),
]
