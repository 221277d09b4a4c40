from django.urls import include, path

from . import views, views_dashboard, views_import, views_media, views_members

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<slug:slug>/", views.client_home, name="client_home"),
    path("c/<slug:slug>/t/<int:taxonomy_id>/review/", views.review, name="review"),
    path("c/<slug:slug>/t/<int:taxonomy_id>/queue.json", views.queue_json, name="queue_json"),
    path("c/<slug:slug>/t/<int:taxonomy_id>/labels.json", views.label_json, name="label_json"),
    path("c/<slug:slug>/t/<int:taxonomy_id>/undo.json", views.undo_json, name="undo_json"),
    path("c/<slug:slug>/t/<int:taxonomy_id>/status.json", views.status_json, name="status_json"),
    # dashboard, its progress poll, streamed exports (labeling/views_dashboard.py)
    path("c/<slug:slug>/t/<int:taxonomy_id>/dashboard/", views_dashboard.dashboard, name="dashboard"),
    path("c/<slug:slug>/t/<int:taxonomy_id>/progress.json", views_dashboard.progress_json, name="dashboard_progress"),
    path("c/<slug:slug>/t/<int:taxonomy_id>/export/<str:kind>", views_dashboard.export, name="export"),
    path("c/<slug:slug>/import/", views_import.upload, name="import_upload"),
    path("c/<slug:slug>/imports/<int:job_id>/", views_import.job_detail, name="import_job"),
    path("c/<slug:slug>/imports/<int:job_id>.json", views_import.job_json, name="import_job_json"),
    path("c/<slug:slug>/members/", views_members.member_list, name="members"),
    path("c/<slug:slug>/members/<int:membership_id>/", views_members.member_update, name="member_update"),
    path("media/assets/<int:asset_id>/image", views_media.asset_image, name="asset_image"),
    path("media/assets/<int:asset_id>/thumb", views_media.asset_thumb, name="asset_thumb"),
    path("", include("labeling.urls_explore")),
]
