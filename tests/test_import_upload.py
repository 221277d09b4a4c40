"""Browser upload: only the client's admins may import; everyone else learns nothing."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from labeling.models import Asset, ImportJob, JobState, Label, Membership, Role
from labeling.services import importing
from tests.conftest import login


@pytest.fixture(autouse=True)
def private_var(settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"  # staging folders live under VAR_DIR/uploads


def upload_url(slug: str = "acme") -> str:
    return reverse("import_upload", args=[slug])


def as_upload(path, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="image/jpeg")


def test_admin_sees_the_form(client, world):
    login(client, world.alice)
    page = client.get(upload_url())
    assert page.status_code == 200
    assert b'name="files"' in page.content and b"webkitdirectory" in page.content
    assert b'value="%d"' % world.brand.pk in page.content


def test_admin_upload_of_a_folder_and_a_zip_imports_with_labels(client, world, shoe_paths, settings):
    # Eager: the view's enqueue runs tasks.run_import -> importing.run_job right in the request.
    settings.CELERY_TASK_ALWAYS_EAGER = True
    nike, adidas = shoe_paths["test"]["nike"][:2], shoe_paths["test"]["adidas"][0]
    converse = shoe_paths["test"]["converse"][0]
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("converse/" + converse.name, converse.read_bytes())
    login(client, world.alice)

    response = client.post(upload_url(), {
        "files": [SimpleUploadedFile("set.zip", zipped.getvalue(), content_type="application/zip")],
        "folder": [as_upload(p) for p in nike] + [as_upload(adidas, "x.jpg")],
        # What the page's script sends: webkitRelativePath of each folder file.
        "paths": json.dumps([f"picked/nike/{p.name}" for p in nike] + ["picked/../../adidas/x.jpg"]),
        "taxonomy": str(world.brand.pk),
    })

    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("import_job", args=["acme", job.pk])
    assert (job.client, job.created_by, job.source) == (world.acme, world.alice, "upload")
    assert job.labels_from_folders == world.brand
    assert job.state == JobState.SUCCEEDED and job.n_created == 4 and job.n_failed == 0, job.errors
    assert not importing.staging_dir(job).exists(), "staging folder removed after the import"
    names = set(Asset.objects.values_list("original_name", flat=True))
    assert names == {"adidas/x.jpg", f"set.zip/converse/{converse.name}"} | {f"nike/{p.name}" for p in nike}
    tags = sorted(t for lab in Label.objects.filter(is_current=True) for t in lab.tags.values_list("name", flat=True))
    assert tags == ["adidas", "converse", "nike", "nike"]


def test_staging_keeps_safe_relative_paths_and_commits_a_queued_job(world, shoe_paths):
    shoe = shoe_paths["test"]["nike"][0]
    files = [(as_upload(shoe, "a.jpg"), "picked/nike/a.jpg"), (as_upload(shoe, "b.jpg"), "picked/../../../etc/b.jpg"),
             (as_upload(shoe, "c.jpg"), "/abs/c.jpg"), (as_upload(shoe, "a.jpg"), ""), (as_upload(shoe, "a.jpg"), "")]

    job = importing.stage_upload(world.acme, files, user=world.alice)

    assert job.state == JobState.QUEUED and job.source == importing.UPLOAD
    staged = importing.staging_dir(job)
    assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()) == [
        "a (2).jpg", "a.jpg", "c.jpg", "etc/b.jpg", "nike/a.jpg",
    ]
    assert all(p.read_bytes() == shoe.read_bytes() for p in staged.rglob("*.jpg"))
    assert [p.name for p in staged.parent.iterdir()] == [str(job.pk)], "no half-staged folder left"


def test_upload_runs_in_eager_mode_and_the_job_page_shows_it(client, world, shoe_paths, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    login(client, world.alice)
    files = [as_upload(p) for p in shoe_paths["test"]["converse"][:2]]
    files.append(SimpleUploadedFile("broken.jpg", b"not an image", content_type="image/jpeg"))

    response = client.post(upload_url(), {"files": files}, follow=True)

    job = ImportJob.objects.get()
    assert job.state == JobState.SUCCEEDED and (job.n_created, job.n_failed) == (2, 1)
    assert response.status_code == 200 and b"broken.jpg" in response.content and b"not an image" in response.content
    data = client.get(reverse("import_job_json", args=["acme", job.pk])).json()
    assert data["state"] == "succeeded" and data["done"] and data["percent"] == 100
    assert (data["created"], data["failed"]) == (2, 1)
    assert data["errors"][0]["file"] == "broken.jpg"
    assert not Label.objects.exists(), "no taxonomy picked: no labels"


def test_upload_limits_give_clear_errors(client, world, shoe_paths, settings):
    login(client, world.alice)
    shoe = shoe_paths["test"]["nike"][0]
    assert b"Choose at least one" in client.post(upload_url(), {}).content
    settings.TAGLOOP_MAX_UPLOAD_FILES = 2
    page = client.post(upload_url(), {"files": [as_upload(shoe, f"{i}.jpg") for i in range(3)]})
    assert page.status_code == 400 and b"Too many files" in page.content
    settings.TAGLOOP_MAX_UPLOAD_FILES = 100
    settings.TAGLOOP_MAX_UPLOAD_BYTES = 1000
    page = client.post(upload_url(), {"files": [as_upload(shoe)]})
    assert page.status_code == 400 and b"Upload too large" in page.content
    settings.TAGLOOP_MAX_UPLOAD_BYTES = 10**9
    for taxonomy in (str(world.other_tax.pk), "\u00b2", "9" * 30):  # another client's; "²"; past any id
        page = client.post(upload_url(), {"files": [as_upload(shoe)], "taxonomy": taxonomy})
        assert page.status_code == 400 and b"not a taxonomy of this client" in page.content
    assert not ImportJob.objects.exists()
    assert not list((settings.VAR_DIR / "uploads").glob("*")), "refused uploads leave nothing staged"


def test_with_csrf_checks_on_a_too_large_upload_is_refused_unparsed_and_too_many_files_get_the_forms_message(
    world, shoe_paths, settings, monkeypatch, no_broker
):
    from django.http.multipartparser import MultiPartParser
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)  # as a real browser's request meets the middleware
    login(browser, world.alice)
    token = browser.get(upload_url()).cookies["csrftoken"].value
    shoe = shoe_paths["test"]["nike"][0]
    parsed: list[int] = []
    real_parse = MultiPartParser.parse
    monkeypatch.setattr(MultiPartParser, "parse", lambda self: parsed.append(1) or real_parse(self))

    settings.TAGLOOP_MAX_UPLOAD_BYTES = 1000
    page = browser.post(upload_url(), {"files": [as_upload(shoe)], "csrfmiddlewaretoken": token})
    assert page.status_code == 400 and b"Upload too large" in page.content
    assert parsed == []  # refused on its Content-Length, before anything was read or stored

    settings.TAGLOOP_MAX_UPLOAD_BYTES = 10**9
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2  # Django's own cap, hit while parsing
    page = browser.post(upload_url(), {"files": [as_upload(shoe, f"{i}.jpg") for i in range(3)], "csrfmiddlewaretoken": token})
    assert page.status_code == 400 and b"Too many files" in page.content and b"send a ZIP" in page.content

    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 100
    forged = browser.post(upload_url(), {"files": [as_upload(shoe)]})  # no token: still refused
    assert forged.status_code == 403 and not ImportJob.objects.exists()
    sent = browser.post(upload_url(), {"files": [as_upload(shoe)], "csrfmiddlewaretoken": token})
    assert sent.status_code == 302 and ImportJob.objects.count() == 1 and no_broker["import"] == 1


@pytest.mark.parametrize("who", ["olga", "vic"])
def test_operators_and_viewers_may_not_import_and_are_told_the_page_is_for_admins(client, world, shoe_paths, who, caplog):
    login(client, getattr(world, who))
    page = client.get(upload_url())
    [logged] = [r for r in caplog.records if r.name == "django.request"]
    assert logged.status_code == 403 and logged.exc_info is None  # a routine 403: one line, no traceback
    role = {"olga": "operator", "vic": "viewer"}[who]
    assert page.status_code == 403 and f"This page is for admins of Acme; your role there is {role}." in page.content.decode()
    assert client.post(upload_url(), {"files": [as_upload(shoe_paths["test"]["nike"][0])]}).status_code == 403
    assert not ImportJob.objects.exists()


def test_other_clients_users_get_404_everywhere(client, world, shoe_paths, tmp_path):
    job = importing.create_job(world.acme, str(tmp_path), user=world.alice)
    login(client, world.otto)
    assert client.get(upload_url()).status_code == 404
    assert client.post(upload_url(), {"files": [as_upload(shoe_paths["test"]["nike"][0])]}).status_code == 404
    assert client.get(reverse("import_job", args=["acme", job.pk])).status_code == 404
    assert client.get(reverse("import_job_json", args=["acme", job.pk])).status_code == 404
    # Their own client's URL does not reach acme's job either, not even as globex's admin.
    Membership.objects.filter(user=world.otto, client=world.globex).update(role=Role.ADMIN)
    assert client.get(reverse("import_job_json", args=["globex", job.pk])).status_code == 404
    assert ImportJob.objects.count() == 1


def test_anonymous_is_sent_to_login(client, world, tmp_path):
    job = importing.create_job(world.acme, str(tmp_path))
    job_urls = [reverse(name, args=["acme", job.pk]) for name in ("import_job", "import_job_json")]
    for url in [upload_url(), *job_urls]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_job_page_polls_json_while_running(client, world, tmp_path):
    job = importing.create_job(world.acme, str(tmp_path))
    login(client, world.alice)
    page = client.get(reverse("import_job", args=["acme", job.pk]))
    assert page.status_code == 200
    assert reverse("import_job_json", args=["acme", job.pk]).encode() in page.content
    assert b'data-done="0"' in page.content
    data = client.get(reverse("import_job_json", args=["acme", job.pk])).json()
    assert data["state"] == "queued" and not data["done"] and data["processed"] == 0
