"""Deployment and login security, against the real settings module and URLs.

Settings read from the environment are checked in a fresh interpreter (as gunicorn or a Celery
worker would start), everything else with Django's test client."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from django.contrib.auth import SESSION_KEY
from django.core.cache import cache
from django.test import Client as HttpClient
from rest_framework.test import APIClient

from labeling.models import Membership, ModelVersion, Role, Taxonomy, TrainingRun
from tests.conftest import REPO

pytestmark = pytest.mark.django_db

STRONG_KEY = "k3y-" + "9f2Qx7Lw0pZr4Tn8Vb6Hc1Md5Sj3Ga" * 2
# The documented production environment (README, "Production"), behind nginx terminating TLS.
PRODUCTION_ENV = {
    "SECRET_KEY": STRONG_KEY, "DEBUG": "0", "ALLOWED_HOSTS": "tagloop.example.com",
    "TAGLOOP_HTTPS": "1", "TAGLOOP_PROXY_SSL_HEADER": "X-Forwarded-Proto", "TAGLOOP_NUM_PROXIES": "1",
}
PRINT_SETTINGS = (
    "import json; from django.conf import settings as s; "
    "print(json.dumps({'debug': s.DEBUG, 'session_secure': s.SESSION_COOKIE_SECURE, 'csrf_secure': s.CSRF_COOKIE_SECURE,"
    " 'ssl_redirect': s.SECURE_SSL_REDIRECT, 'hsts': s.SECURE_HSTS_SECONDS, 'proxy': s.SECURE_PROXY_SSL_HEADER,"
    " 'proxies': s.REST_FRAMEWORK.get('NUM_PROXIES'), 'cache': s.CACHES['default']}))"
)


@pytest.fixture(autouse=True)
def empty_cache():
    """Failed-login counters and throttle history live in the cache: each test starts without
    any and leaves none behind for the rest of the suite (which logs in from 127.0.0.1 too)."""
    cache.clear()
    yield
    cache.clear()


def start(tmp_path, env: dict[str, str], code: str = PRINT_SETTINGS, *args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter with only these variables set (as a server process would start)."""
    base = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "DATABASE_URL", "CELERY_BROKER_URL", "PYTHONPATH")}
    base.update(TAGLOOP_VAR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="tagloop.settings", **env)
    command = [sys.executable, "-c", code] if not args else [sys.executable, "manage.py", *args]
    return subprocess.run(command, cwd=REPO, env=base, capture_output=True, text=True, timeout=300)


def login_form(client: HttpClient, username: str, password: str, url: str = "/login/", **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


# --- settings from the environment --------------------------------------------------------------


def test_a_production_start_without_a_secret_key_fails_loudly_and_a_local_one_still_starts(tmp_path):
    for env in ({"DEBUG": "0", "ALLOWED_HOSTS": "tagloop.example.com"}, {"DEBUG": "0"},
                {"ALLOWED_HOSTS": "tagloop.example.com"},
                {"DEBUG": "0", "SECRET_KEY": "insecure-local-only-set-SECRET_KEY-in-production"}):
        started = start(tmp_path, env)
        assert started.returncode != 0, env
        assert "ImproperlyConfigured" in started.stderr and "SECRET_KEY" in started.stderr, started.stderr
    # the embedded default (nothing set: localhost only) and DEBUG=1 (./tagloop.sh demo) keep the local key
    for env in ({}, {"DEBUG": "1"}, {"DEBUG": "1", "ALLOWED_HOSTS": "0.0.0.0"}):
        started = start(tmp_path, env)
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["session_secure"] is False


def test_the_documented_production_environment_turns_https_on_and_passes_the_deploy_check(tmp_path):
    started = start(tmp_path, PRODUCTION_ENV)
    assert started.returncode == 0, started.stderr
    s = json.loads(started.stdout)
    assert s["debug"] is False and s["session_secure"] and s["csrf_secure"] and s["ssl_redirect"]
    assert s["hsts"] >= 30 * 24 * 3600
    assert s["proxy"] == ["HTTP_X_FORWARDED_PROTO", "https"] and s["proxies"] == 1
    # What stays is the host's own decision (README): HSTS for subdomains too, the preload list.
    check = start(tmp_path, PRODUCTION_ENV, "", "check", "--deploy")
    assert check.returncode == 0, check.stderr
    assert sorted(re.findall(r"\(security\.(W\d+)\)", check.stderr + check.stdout)) == ["W005", "W021"]
    everything = {**PRODUCTION_ENV, "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1", "SECURE_HSTS_PRELOAD": "1"}
    check = start(tmp_path, everything, "", "check", "--deploy", "--fail-level", "WARNING")
    assert check.returncode == 0 and "no issues" in check.stdout, check.stdout + check.stderr


def test_a_shared_cache_is_configured_by_cache_url(tmp_path):
    redis = json.loads(start(tmp_path, {"CACHE_URL": "redis://cache.internal:6379/2"}).stdout)["cache"]
    assert redis == {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                     "LOCATION": "redis://cache.internal:6379/2"}
    db = json.loads(start(tmp_path, {"CACHE_URL": "db://tagloop_cache"}).stdout)["cache"]
    assert db == {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "tagloop_cache"}
    assert start(tmp_path, {"CACHE_URL": "memcached://x"}).returncode != 0


# --- login brute force ----------------------------------------------------------------------


def test_five_failed_logins_lock_that_username_out_from_that_address(world):
    c = HttpClient()
    for _ in range(5):
        r = login_form(c, "olga", "wrong-password")
        assert r.status_code == 200 and b"correct username and password" in r.content
    locked = login_form(c, "olga", "olga-pass-123")
    assert locked.status_code == 200 and b"Too many failed logins" in locked.content
    assert SESSION_KEY not in c.session
    # the same person from another address, and another person from this one, are not locked out
    assert login_form(HttpClient(), "olga", "olga-pass-123", REMOTE_ADDR="10.1.2.3").status_code == 302
    assert login_form(HttpClient(), "vic", "vic-pass-123").status_code == 302


def test_a_successful_login_forgets_the_earlier_failures(world):
    for _ in range(4):
        login_form(HttpClient(), "olga", "wrong-password")
    assert login_form(HttpClient(), "olga", "olga-pass-123").status_code == 302
    for _ in range(4):
        login_form(HttpClient(), "olga", "wrong-password")
    assert login_form(HttpClient(), "olga", "olga-pass-123").status_code == 302
    for _ in range(5):
        login_form(HttpClient(), "olga", "wrong-password")
    assert b"Too many failed logins" in login_form(HttpClient(), "olga", "olga-pass-123").content


def test_a_forged_x_forwarded_for_does_not_escape_the_lockout(world):
    for i in range(5):
        login_form(HttpClient(), "olga", "wrong-password", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
    r = login_form(HttpClient(), "olga", "olga-pass-123", HTTP_X_FORWARDED_FOR="198.51.100.77")
    assert r.status_code == 200 and b"Too many failed logins" in r.content


def test_the_lockout_limit_and_window_come_from_settings(world, settings):
    settings.TAGLOOP_LOGIN_FAILURE_LIMIT, settings.TAGLOOP_LOGIN_FAILURE_WINDOW = 2, 1
    for _ in range(2):
        login_form(HttpClient(), "olga", "wrong-password")
    assert b"Too many failed logins" in login_form(HttpClient(), "olga", "olga-pass-123").content
    time.sleep(1.2)  # the window is over
    assert login_form(HttpClient(), "olga", "olga-pass-123").status_code == 302
    settings.TAGLOOP_LOGIN_FAILURE_LIMIT = 0  # off
    for _ in range(3):
        login_form(HttpClient(), "olga", "wrong-password")
    assert login_form(HttpClient(), "olga", "olga-pass-123").status_code == 302


def test_a_wrong_password_on_the_admin_login_page_gets_the_form_again_not_a_server_error(world):
    r = login_form(HttpClient(), "alice", "wrong-password", url="/admin/login/")
    assert r.status_code == 200 and b"correct username and password" in r.content


def test_the_django_admin_login_is_locked_out_the_same_way(world):
    world.alice.is_staff = True
    world.alice.save(update_fields=["is_staff"])
    for _ in range(5):
        assert login_form(HttpClient(), "alice", "wrong-password", url="/admin/login/").status_code == 200
    c = HttpClient()
    r = login_form(c, "alice", "alice-pass-123", url="/admin/login/")
    assert r.status_code == 200 and b"Too many failed logins" in r.content
    assert SESSION_KEY not in c.session


def test_the_token_endpoint_refuses_a_username_after_five_failed_passwords(world):
    api = APIClient()
    for _ in range(5):
        r = api.post("/api/v1/auth/token/", {"username": "olga", "password": "nope"}, format="json")
        assert r.status_code == 400
    r = api.post("/api/v1/auth/token/", {"username": "olga", "password": "olga-pass-123"}, format="json")
    assert r.status_code == 429 and "token" not in r.json() and int(r["Retry-After"]) > 0
    # the lockout is shared with the login form: same username, same address
    assert b"Too many failed logins" in login_form(HttpClient(), "olga", "olga-pass-123").content


def test_the_token_endpoint_is_rate_limited_per_address_whatever_the_username(world):
    api = APIClient()
    answers = [api.post("/api/v1/auth/token/", {"username": f"user{i}", "password": "x"}, format="json").status_code
               for i in range(10)]
    assert answers == [400] * 10
    r = api.post("/api/v1/auth/token/", {"username": "vic", "password": "vic-pass-123"}, format="json")
    assert r.status_code == 429
    other = APIClient(REMOTE_ADDR="10.9.8.7")
    assert other.post("/api/v1/auth/token/", {"username": "vic", "password": "vic-pass-123"},
                      format="json").status_code == 200


# --- sessions --------------------------------------------------------------------------------


def test_a_login_session_lasts_twelve_hours_not_two_weeks(world):
    c = HttpClient()
    assert login_form(c, "olga", "olga-pass-123").status_code == 302
    assert int(c.cookies["sessionid"]["max-age"]) == 12 * 3600


# --- Django admin -------------------------------------------------------------------------------


@pytest.fixture
def client_admin(world) -> HttpClient:
    """alice, acme's only admin, staff as the members page makes her."""
    world.alice.is_staff = True
    world.alice.save(update_fields=["is_staff"])
    c = HttpClient()
    c.force_login(world.alice)
    return c


def test_the_django_admin_keeps_the_members_page_rules(world, client_admin):
    own = Membership.objects.get(user=world.alice, client=world.acme)
    r = client_admin.post(f"/admin/labeling/membership/{own.pk}/change/", {"role": Role.VIEWER})
    assert r.status_code == 200 and b"the only admin of Acme" in r.content
    own.refresh_from_db()
    assert own.role == Role.ADMIN  # acme keeps its one admin
    # a member made admin here gets staff status, as on the members page
    olga = Membership.objects.get(user=world.olga, client=world.acme)
    assert client_admin.post(f"/admin/labeling/membership/{olga.pk}/change/",
                             {"role": Role.ADMIN}).status_code == 302
    world.olga.refresh_from_db()
    assert world.olga.is_staff
    # so does one added here (otto, whom alice also administers in globex)
    Membership.objects.create(user=world.alice, client=world.globex, role=Role.ADMIN)
    r = client_admin.post("/admin/labeling/membership/add/",
                          {"user": world.otto.pk, "client": world.acme.pk, "role": Role.ADMIN})
    assert r.status_code == 302
    world.otto.refresh_from_db()
    assert world.otto.is_staff and Membership.objects.get(user=world.otto, client=world.acme).role == Role.ADMIN
    # with other admins there, alice may step down
    assert client_admin.post(f"/admin/labeling/membership/{own.pk}/change/", {"role": Role.VIEWER}).status_code == 302
    own.refresh_from_db()
    assert own.role == Role.VIEWER


def test_a_client_admin_cannot_add_read_only_records_in_the_django_admin(world, client_admin):
    for model in ("trainingrun", "modelversion"):
        assert client_admin.get(f"/admin/labeling/{model}/add/").status_code == 403
        assert client_admin.post(f"/admin/labeling/{model}/add/", {}).status_code == 403
    assert TrainingRun.objects.count() == 0 and ModelVersion.objects.count() == 0


def test_pages_and_api_docs_forbid_inline_scripts_by_content_security_policy(world):
    # tests/test_pages_browser.py fails on any CSP violation in Chromium; here: the header itself.
    c = HttpClient()
    c.force_login(world.alice)
    for url in ("/login/", "/c/acme/", "/api/v1/docs/"):
        csp = c.get(url)["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp


def test_a_client_admin_adds_a_taxonomy_with_its_tags_on_one_admin_page(world, client_admin):
    page = client_admin.get(f"/admin/labeling/taxonomy/{world.brand.pk}/change/").content.decode()
    assert 'name="tags-TOTAL_FORMS"' in page and 'value="nike"' in page  # the tags are there to edit
    assert "tags-0-DELETE" not in page  # retired, not deleted, from here
    form = {"client": world.acme.pk, "name": "colours", "kind": "multi", "retrain_threshold": 20,
            "tags-TOTAL_FORMS": 2, "tags-INITIAL_FORMS": 0, "tags-MIN_NUM_FORMS": 0, "tags-MAX_NUM_FORMS": 1000,
            "tags-0-name": "red", "tags-0-position": 0, "tags-1-name": "blue", "tags-1-position": 1}
    assert client_admin.post("/admin/labeling/taxonomy/add/", form).status_code == 302
    colours = Taxonomy.objects.get(client=world.acme, name="colours")
    assert sorted(colours.tags.values_list("name", flat=True)) == ["blue", "red"]
    other = Taxonomy.objects.filter(client=world.globex).first()
    assert client_admin.get(f"/admin/labeling/taxonomy/{other.pk}/change/").status_code in (302, 404)
