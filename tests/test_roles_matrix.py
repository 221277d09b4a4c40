"""Every URL pattern of the project (colleagues' pages included: the list is read from the
resolver at run time) × every role × own / other client: nothing leaks.

Path kwargs come from objects made in both clients, matched by name (slug, taxonomy_id,
asset_id, <model>_id, ...). Rules:
- a user never gets a 2xx (or a redirect other than to a login page) for a client they are
  not a member of, whatever the method; anonymous callers never get data at all;
- a viewer's write (POST/PATCH/DELETE) to a client-scoped URL never succeeds;
- nobody ever gets a 500;
- the known role table below holds exactly (too low: 403/404; high enough: allowed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client as HttpClient
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404

from labeling.models import (
    BulkAction, Cluster, Clustering, ClusterMember, ImportJob, Label, LabelEvent, Lease, Membership, ModelVersion, Role,
    Suggestion, Tag, TrainingRun,
)
from tests._helpers import make_asset

pytestmark = pytest.mark.django_db

SECRET = {"acme": "ACME-SECRET-7f3a", "globex": "GLOBEX-SECRET-9c1e"}
PUBLIC = {"favicon", "login", "logout", "api_token", "admin:login", "admin:logout", "admin:password_reset", "admin:jsi18n"}
# POSTs that only read: search-by-image uploads a query picture that is never stored.
READ_ONLY_POSTS = {"search"}
WRITES = ("post", "patch", "delete")

# Known endpoints: the lowest role allowed per (url name, method). Below it: 403 or 404.
ROLE_TABLE = {
    ("api_taxonomies", "post"): Role.ADMIN, ("api_taxonomy", "patch"): Role.ADMIN, ("api_tags", "post"): Role.ADMIN,
    ("api_tag", "patch"): Role.ADMIN, ("api_assets", "post"): Role.ADMIN, ("api_import", "get"): Role.ADMIN,
    ("api_runs", "get"): Role.VIEWER, ("api_labels", "post"): Role.OPERATOR, ("api_labels_bulk", "post"): Role.OPERATOR,
    ("api_model_promote", "post"): Role.ADMIN,
    ("api_predict", "post"): Role.OPERATOR, ("api_labels", "get"): Role.VIEWER, ("api_assets", "get"): Role.VIEWER,
    ("dashboard", "get"): Role.VIEWER, ("export", "get"): Role.VIEWER, ("import_upload", "get"): Role.ADMIN,
    ("import_job", "get"): Role.ADMIN, ("label_json", "post"): Role.OPERATOR, ("undo_json", "post"): Role.OPERATOR,
    ("review", "get"): Role.VIEWER, ("queue_json", "get"): Role.VIEWER,
    ("members", "get"): Role.ADMIN, ("members", "post"): Role.ADMIN, ("member_update", "post"): Role.ADMIN,
    ("api_members", "get"): Role.ADMIN, ("api_members", "post"): Role.ADMIN, ("api_member", "get"): Role.ADMIN,
    ("api_member", "patch"): Role.ADMIN, ("api_member", "delete"): Role.ADMIN,
}
RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass
class Route:
    route: str
    name: str

    def fill(self, values: dict[str, str]) -> str | None:
        """The concrete path, or None when a kwarg has no value."""
        missing = []

        def sub(m: re.Match) -> str:
            key = m.group("name")
            if key not in values:
                missing.append(key)
                return ""
            return str(values[key])

        path = re.sub(r"<(?:\w+:)?(?P<name>\w+)>", sub, self.route)
        path = re.sub(r"\(\?P<(?P<name>\w+)>[^)]*\)", sub, path)
        path = path.replace("^", "").replace("$", "").replace(r"\Z", "").replace("\\", "")
        return None if missing else "/" + path


def routes(resolver=None, prefix: str = "", namespace: str = "") -> list[Route]:
    out = []
    for p in (resolver or get_resolver()).url_patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            out += routes(p, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            out.append(Route(prefix + str(p.pattern), namespace + (p.name or "")))
    return out


def make_client_objects(world, client, tax, user, marker: str) -> dict[type, object]:
    """One of everything in a client, so any <model>_id kwarg has a value of that client."""
    tag = Tag.objects.create(taxonomy=tax, name=f"{marker}-tag")
    asset = make_asset(client, hash(marker) % 1000, name=f"{marker}-asset.png")
    job = ImportJob.objects.create(client=client, source=f"/data/{marker}", state="succeeded")
    mv = ModelVersion.objects.create(taxonomy=tax, version=1, backbone="test", artifact="none", tag_ids=[tag.pk],
                                     metrics={"accuracy": 1.0, "confusion": [[1]], "labels": [tag.name]})
    suggestion = Suggestion.objects.create(asset=asset, taxonomy=tax, model_version=mv, probs=[1.0], top1_tag=tag,
                                           top1_prob=1.0, margin=1.0, entropy=0.0, uncertainty=0.0)
    run = TrainingRun.objects.create(taxonomy=tax, state="promoted", model_version=mv)
    bulk = BulkAction.objects.create(taxonomy=tax, user=user, kind="apply_tags", n_labels=1)
    label = Label.objects.create(asset=asset, taxonomy=tax, user=user, source="manual", batch=bulk)
    label.tags.set([tag])
    event = LabelEvent.objects.create(taxonomy=tax, asset=asset, user=user, action="set", label=label, after=[tag.pk])
    clustering = Clustering.objects.create(client=client, backbone="test", k=1, state="succeeded", is_current=True)
    cluster = Cluster.objects.create(clustering=clustering, index=0, size=1)
    member = ClusterMember.objects.create(cluster=cluster, asset=asset, distance=0.0)
    lease = Lease.objects.create(taxonomy=tax, asset=asset, user=user, expires="2000-01-01T00:00Z")
    objs = [tax, tag, asset, job, mv, suggestion, run, bulk, label, event, clustering, cluster, member, lease,
            Membership.objects.get(user=user, client=client), client]
    return {type(o): o for o in objs}


def kwargs_for(client, objects: dict[type, object]) -> dict[str, str]:
    """Values for every kwarg name seen in the URL patterns, from this client's objects."""
    models = {m.__name__.lower(): m for m in apps.get_app_config("labeling").get_models()}
    asset = objects[next(m for m in objects if m.__name__ == "Asset")]
    values = {
        "slug": client.slug, "kind": "csv", "app_label": "labeling", "url": "x",
        "object_id": str(asset.pk), "content_type_id": str(ContentType.objects.get_for_model(type(asset)).pk),
        "index": "0", "cluster_index": "0",
    }
    names = {name for r in routes() for name in re.findall(r"<(?:\w+:)?(\w+)>", r.route)}
    for name in names - set(values):
        stem = name.removesuffix("_id").replace("_", "")
        model = models.get(stem) or next(
            (m for n, m in sorted(models.items(), key=lambda kv: len(kv[0])) if n.endswith(stem)), None
        )
        obj = objects.get(model) if model else None
        values[name] = str(obj.pk) if obj is not None else "1"
    return values


@pytest.fixture
def matrix(world, monkeypatch, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Nothing reaches a broker from a request made here.
    from celery.app.task import Task

    monkeypatch.setattr(Task, "apply_async", lambda *a, **k: None)
    objects = {
        "acme": make_client_objects(world, world.acme, world.brand, world.olga, SECRET["acme"]),
        "globex": make_client_objects(world, world.globex, world.other_tax, world.otto, SECRET["globex"]),
    }
    return {
        "kwargs": {
            "acme": kwargs_for(world.acme, objects["acme"]),
            "globex": kwargs_for(world.globex, objects["globex"]),
        },
        "members": {"alice": {"acme": Role.ADMIN}, "olga": {"acme": Role.OPERATOR}, "vic": {"acme": Role.VIEWER},
                    "otto": {"globex": Role.OPERATOR}, "anonymous": {}},
    }


def call(http: HttpClient, method: str, url: str):
    response = getattr(http, method)(url, data="{}" if method != "get" else None, content_type="application/json") \
        if method != "get" else http.get(url)
    body = b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content
    return response, body


def to_login(response) -> bool:
    return response.status_code in (301, 302) and "login" in response.get("Location", "")


def client_scoped(route: Route) -> bool:
    return any(k in route.route for k in ("<slug:slug>", "_id>", "<path:object_id>"))


@pytest.mark.parametrize("who", ["alice", "olga", "vic", "otto", "anonymous"])
def test_no_url_leaks_another_clients_data_or_lets_a_role_do_more_than_it_may(world, matrix, who):
    http = HttpClient()
    if who != "anonymous":
        http.force_login(getattr(world, who))
    member_of = matrix["members"][who]
    failures, checked = [], 0
    for route in routes():
        if route.name in PUBLIC:
            continue
        admin = route.name.startswith("admin:")
        for target in ("acme", "globex"):
            url = route.fill(matrix["kwargs"][target])
            if url is None:
                failures.append(f"{route.route}: no value for its kwargs")
                continue
            try:
                resolve(url.split("?")[0])
            except Resolver404:
                continue  # a regex route whose filled form does not match: covered by its siblings
            scoped = client_scoped(route) and not admin
            own = target in member_of
            methods = ("get",) if admin else ("get",) + WRITES
            for method in methods:
                # Each request's writes are rolled back: a DELETE early on (a membership, say)
                # must not turn a later route's check into a 404.
                with transaction.atomic():
                    r, body = call(http, method, url)
                    transaction.set_rollback(True)
                checked += 1
                where = f"{who} {method.upper()} {url} ({route.name or route.route}) -> {r.status_code}"
                if r.status_code >= 500:
                    failures.append(where + ": server error")
                    continue
                ok = 200 <= r.status_code < 300 or (r.status_code in (301, 302, 303) and not to_login(r))
                if who == "anonymous" and ok:
                    failures.append(where + ": anonymous got through")
                if scoped and not own and ok:
                    failures.append(where + ": other client's URL answered")
                for client, marker in SECRET.items():
                    if client not in member_of and marker.encode() in body:
                        failures.append(where + f": {client}'s data in the body")
                role = member_of.get(target)
                if scoped and own and method != "get" and role == Role.VIEWER and ok and route.name not in READ_ONLY_POSTS:
                    failures.append(where + ": a viewer wrote")
                needed = ROLE_TABLE.get((route.name, method))
                if needed and own and role is not None:
                    allowed = RANK[role] >= RANK[needed]
                    if allowed and r.status_code in (403, 404):
                        failures.append(where + f": {role} refused, needs only {needed}")
                    if not allowed and r.status_code not in (403, 404):
                        failures.append(where + f": {role} allowed, needs {needed}")
    assert checked > 100
    assert not failures, f"{len(failures)} of {checked} requests broke the rules:\n" + "\n".join(failures[:60])
