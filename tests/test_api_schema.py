"""Schemathesis against the OpenAPI schema, in-process (pytest-django's live server thread, so
the app runs with its own database connection as in production): generated valid
and invalid requests for every operation, as an admin with a token; no answer may be a 500
(nor contradict the schema's status codes). Path ids are half the time real ones, so requests
reach the handlers and not only the 404 of a missing object."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings as hsettings, strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

# no_broker and private_uploads (conftest) apply to every test here, as in test_api.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker", "private_uploads")]
EXAMPLES = {"positive": 12, "negative": 8}  # per operation: about 40 s for the whole API on 2 cores


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_no_generated_request_makes_the_api_fail(transactional_db, live_server, world, lib, no_broker, monkeypatch):
    from celery.app.task import Task
    from django.test import Client as HttpClient
    from schemathesis.generation import GenerationMode

    monkeypatch.setattr(Task, "apply_async", lambda *a, **k: None)
    http = HttpClient()
    http.force_login(world.alice)
    raw = http.get("/api/v1/schema/?format=json").json()
    schema = schemathesis.openapi.from_dict(raw)
    token = Token.objects.create(user=world.alice).key
    real = {"slug": "acme", "taxonomy_id": world.brand.pk, "asset_id": lib.assets[0].pk, "tag_id": lib.tags["nike"],
            "version_id": lib.mv.pk, "kind": "csv"}
    failures, ran = [], {"n": 0}

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hsettings(max_examples=EXAMPLES[mode.value], deadline=None, database=None, derandomize=True,
                       suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            @given(case=operation.as_strategy(generation_mode=mode), use_real=st.booleans())
            def check(case, use_real):
                if use_real and case.path_parameters:
                    case.path_parameters = {k: real.get(k, v) for k, v in case.path_parameters.items()}
                response = case.call(base_url=live_server.url, headers={"Authorization": f"Token {token}"})
                ran["n"] += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

            try:
                check()
            except Unsatisfiable:
                pass  # nothing to make invalid (an operation without parameters or body)
    print(f"schemathesis: {ran['n']} generated requests")
    assert ran["n"] > 200
    assert not failures, "\n".join(failures[:20])
