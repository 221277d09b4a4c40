"""URLs of the explore pages (clusters, similar, search, map, duplicates, second look) and
the bulk action, all under one taxonomy: /c/<slug>/t/<taxonomy_id>/..."""
from django.urls import path

from . import views_explore as v

T = "c/<slug:slug>/t/<int:taxonomy_id>/"

urlpatterns = [
    path(T + "clusters/", v.cluster_list, name="clusters"),
    path(T + "clusters/rebuild/", v.cluster_rebuild, name="cluster_rebuild"),
    path(T + "clusters/<int:index>/", v.cluster_detail, name="cluster"),
    path(T + "assets/<int:asset_id>/similar/", v.similar, name="similar"),
    path(T + "similar.json", v.similar_json, name="similar_json"),
    path(T + "search/", v.search, name="search"),
    path(T + "map/", v.map_page, name="map"),
    path(T + "map.json", v.map_json, name="map_json"),
    path(T + "duplicates/", v.duplicate_list, name="duplicates"),
    path(T + "second-look/", v.second_look, name="second_look"),
    path(T + "keep.json", v.keep_json, name="keep_json"),
    path(T + "bulk.json", v.bulk_json, name="bulk_json"),
    path(T + "bulk/undo.json", v.bulk_undo_json, name="bulk_undo_json"),
]
