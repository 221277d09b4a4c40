"""Bad input to an import never crashes it or loses the other files: odd names, damaged ZIPs,
failing disks, formats browsers can't show. Every file here is real, made with Pillow/zipfile or
taken from the shoe photos; faults come from the file system or the caller, never from a mock
of the importer."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import time
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from PIL import Image

from labeling.models import Asset, ImportJob, JobState, Label
from labeling.services import importing, labels
from labeling.services.import_sources import NAME_BYTES, safe_relative, uploads_root
from tests._helpers import api
from tests.conftest import login


@pytest.fixture(autouse=True)
def private_var(settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"  # staging folders live under VAR_DIR/uploads


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def by_file(job: ImportJob) -> dict[str, dict]:
    return {e["file"]: e for e in job.errors}


def tags_by_name() -> dict[str, list[str]]:
    return {lab.asset.original_name: sorted(t.name for t in lab.tags.all())
            for lab in Label.objects.filter(is_current=True).select_related("asset")}


def media_files(settings, folder: str) -> list[str]:
    root = Path(settings.MEDIA_ROOT) / folder
    return sorted(str(p.relative_to(settings.MEDIA_ROOT)) for p in root.rglob("*") if p.is_file())


# --- names that are not UTF-8 (#1) ---------------------------------------------------------

def undecodable_folder(root: Path, shoe: Path) -> None:
    """Caf\\xe9/shoe.jpg and bad\\xff\\xfename.jpg, as a Latin-1 machine or an old ZIP tool leaves them."""
    base = os.fsencode(root)
    os.makedirs(os.path.join(base, b"Caf\xe9"))
    shutil.copy(shoe, os.path.join(base, b"Caf\xe9", b"shoe.jpg"))
    Path(os.path.join(base, b"bad\xff\xfename.jpg").decode("utf-8", "surrogateescape")).write_bytes(jpeg((9, 9, 9)))


def test_undecodable_names_are_imported_under_a_readable_name_and_the_job_page_shows_them(
        client, world, shoe_paths, tmp_path, settings):
    src = tmp_path / "src"
    undecodable_folder(src, shoe_paths["train"]["nike"][0])

    job = importing.import_paths(world.acme, src, labels_taxonomy=world.brand)

    assert job.state == JobState.SUCCEEDED and job.n_failed == 0, job.errors
    assert set(Asset.objects.values_list("original_name", flat=True)) == {"Caf\ufffd/shoe.jpg", "bad\ufffd\ufffdname.jpg"}
    assert tags_by_name() == {"Caf\ufffd/shoe.jpg": ["Caf\ufffd"]}
    assert len(media_files(settings, "assets")) == 2, "no file without its row"
    login(client, world.alice)
    page = client.get(reverse("import_job", args=["acme", job.pk]))
    assert page.status_code == 200 and "Caf\ufffd".encode() in page.content


def test_the_command_prints_its_whole_report_to_a_strict_utf8_or_ascii_stdout(world, tmp_path):
    src = tmp_path / "src"
    os.makedirs(os.path.join(os.fsencode(src), b"Caf\xe9"))
    Path(os.path.join(os.fsencode(src), b"Caf\xe9", b"notes.jpg").decode("utf-8", "surrogateescape")).write_text("no")
    (src / "Café").mkdir()
    (src / "Café" / "memo.jpg").write_text("no")

    for encoding in ("utf-8", "ascii"):
        out = io.TextIOWrapper(io.BytesIO(), encoding=encoding)  # errors="strict", like a terminal
        call_command("import_assets", "acme", str(src), stdout=out, stderr=io.StringIO())
        out.flush()
        text = out.buffer.getvalue().decode(encoding)
        assert "0 created, 0 duplicates, 2 failed, 0 labeled (of 2 files)" in text, text
        assert "notes.jpg: not an image" in text and "memo.jpg: not an image" in text


# --- damaged ZIPs (#2) ---------------------------------------------------------------------

def zip_with_invalid_utf8_name() -> bytes:
    """The UTF-8 flag set on a name whose bytes are not UTF-8: ZipFile() itself raises."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("XXXXname.jpg", jpeg((4, 5, 6)))
    data = bytearray(buf.getvalue().replace(b"XXXX", b"\xff\xfe\xfd\xfc"))
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        struct.pack_into("<H", data, at + flag_at, struct.unpack_from("<H", data, at + flag_at)[0] | 0x800)
    return bytes(data)


def zip_of_a_newer_version() -> bytes:
    """'Version needed to extract' 6.4: zipfile raises NotImplementedError while listing it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("v.jpg", jpeg((60, 61, 62)))
    data = bytearray(buf.getvalue())
    struct.pack_into("<H", data, data.find(b"PK\x01\x02") + 6, 64)
    return bytes(data)


def test_a_damaged_zip_is_reported_by_name_and_the_files_beside_it_still_import(world, shoe_paths, tmp_path):
    src = tmp_path / "src"
    (src / "nike").mkdir(parents=True)
    shutil.copy(shoe_paths["train"]["nike"][0], src / "nike" / "good.jpg")
    (src / "pack.zip").write_bytes(zip_with_invalid_utf8_name())
    (src / "newer.zip").write_bytes(zip_of_a_newer_version())

    job = importing.import_paths(world.acme, src, labels_taxonomy=world.brand)

    assert job.state == JobState.SUCCEEDED, job.error
    errors = by_file(job)
    assert "not a readable ZIP archive (UnicodeDecodeError" in errors["pack.zip"]["error"]
    assert "not a readable ZIP archive (NotImplementedError" in errors["newer.zip"]["error"]
    assert list(Asset.objects.values_list("original_name", flat=True)) == ["nike/good.jpg"]
    assert tags_by_name() == {"nike/good.jpg": ["nike"]}


def test_a_corrupt_lzma_member_fails_alone_and_every_other_member_is_imported_and_embedded(world, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("good.jpg", jpeg((7, 8, 9)), compress_type=zipfile.ZIP_STORED)
        z.writestr("broken.jpg", jpeg((10, 11, 12)) * 3, compress_type=zipfile.ZIP_LZMA)
        z.writestr("after.jpg", jpeg((13, 14, 15)), compress_type=zipfile.ZIP_STORED)
    data = bytearray(buf.getvalue())
    start = data.find(b"broken.jpg") + len(b"broken.jpg") + 20  # inside the local entry's LZMA stream
    data[start:start + 40] = bytes(b ^ 0x5A for b in data[start:start + 40])
    archive = tmp_path / "lzma.zip"
    archive.write_bytes(bytes(data))

    job = importing.import_paths(world.acme, archive)

    assert job.state == JobState.SUCCEEDED and (job.n_created, job.n_failed) == (2, 1), job.errors
    assert "can't be read (LZMAError" in by_file(job)["broken.jpg"]["error"]
    assert sorted(Asset.objects.values_list("original_name", flat=True)) == ["after.jpg", "good.jpg"]
    assert all(Asset.objects.values_list("embedded_with", flat=True))


def test_assets_stored_before_a_job_fails_are_still_embedded(world, shoe_paths, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, p in enumerate(shoe_paths["train"]["adidas"][:2]):
        shutil.copy(p, src / f"{i}.jpg")

    def terminal_gone(done: int, total: int) -> None:  # e.g. tqdm writing to a closed ssh session
        raise BrokenPipeError("stderr closed")

    with pytest.raises(BrokenPipeError):
        importing.import_paths(world.acme, src, progress=terminal_gone)

    job = ImportJob.objects.get()
    assert job.state == JobState.FAILED and "BrokenPipeError" in job.error and job.n_created == 1
    assert Asset.objects.get().embedded_with, "the stored asset is embedded although the job failed"


# --- browser uploads (#3, #4) ---------------------------------------------------------------

def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/jpeg")


def test_uploads_with_long_nul_or_surrogate_names_are_imported_under_safe_names(client, world, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    login(client, world.alice)
    long_name = "é" * 140 + ".jpg"  # 284 bytes: Django only trims uploads to 255 characters

    response = client.post(reverse("import_upload", args=["acme"]), {
        "files": [upload(long_name, jpeg((1, 2, 3)))],
        "folder": [upload(n, jpeg(c)) for n, c in (("a.jpg", (4, 5, 6)), ("b.jpg", (7, 8, 9)), ("c.jpg", (9, 1, 2)))],
        "paths": json.dumps(["p/" + "x" * 300 + "/a.jpg", "p/n\u0000ul/b.jpg", "p/\ud800sur/c.jpg"]),
    })

    assert response.status_code == 302
    job = ImportJob.objects.get()
    assert job.state == JobState.SUCCEEDED and (job.n_created, job.n_failed) == (4, 0), job.errors
    names = set(Asset.objects.values_list("original_name", flat=True))
    assert {"nul/b.jpg", "sur/c.jpg"} < names
    cut = {n for n in names if n.endswith(".jpg") and n not in ("nul/b.jpg", "sur/c.jpg")}
    assert all(len(part.encode()) <= NAME_BYTES for n in cut for part in n.split("/")) and len(cut) == 2


def test_the_api_stages_a_name_longer_than_255_bytes(world, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    r = api(world.alice).post("/api/v1/clients/acme/assets/", {"files": [upload("é" * 140 + ".jpg", jpeg((4, 1, 1)))]},
                              format="multipart")
    assert r.status_code == 202, r.content
    assert Asset.objects.get().original_name.endswith("éé.jpg")


def test_colons_in_uploaded_names_are_kept_as_underscores_and_folders_still_label(client, world, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    login(client, world.alice)

    client.post(reverse("import_upload", args=["acme"]), {
        "files": [upload("12:30 lunch.jpg", jpeg((1, 2, 3)))],
        "folder": [upload("a.jpg", jpeg((4, 5, 6))), upload("b:c.jpg", jpeg((7, 8, 9)))],
        "paths": json.dumps(["picked/Trip: Rome/a.jpg", "picked/nike/b:c.jpg"]),
        "taxonomy": str(world.brand.pk),
    })

    job = ImportJob.objects.get()
    assert job.n_created == 3 and not job.n_failed, job.errors
    assert tags_by_name() == {"Trip_ Rome/a.jpg": ["Trip_ Rome"], "nike/b_c.jpg": ["nike"]}
    assert Asset.objects.filter(original_name="12_30 lunch.jpg").exists()


def test_safe_relative_drops_only_a_leading_drive_letter():
    assert safe_relative("C:/picked/a.jpg") == Path("a.jpg")
    assert safe_relative("picked/D:/a.jpg") == Path("D_/a.jpg")
    assert safe_relative("picked/../../x/./a.jpg") == Path("x/a.jpg")


def test_a_file_that_cannot_be_staged_is_reported_by_name_and_the_others_import(client, world, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    login(client, world.alice)

    # 'x' is staged as a file first, so the folder 'x' that a.jpg needs can't be made.
    response = client.post(reverse("import_upload", args=["acme"]), {
        "folder": [upload("x", b"no extension"), upload("a.jpg", jpeg((4, 5, 6))), upload("b.jpg", jpeg((7, 8, 9)))],
        "paths": json.dumps(["p/x", "p/x/a.jpg", "p/ok/b.jpg"]),
    })

    assert response.status_code == 302
    job = ImportJob.objects.get()
    assert job.state == JobState.SUCCEEDED and (job.n_created, job.n_failed, job.total) == (1, 1, 3), job.errors
    assert "could not be stored for import" in by_file(job)["p/x/a.jpg"]["error"]
    assert list(Asset.objects.values_list("original_name", flat=True)) == ["ok/b.jpg"]


# --- TIFF (#6, #7) ---------------------------------------------------------------------------

def rotated_tiff(path: Path) -> None:
    """80x40 stored, EXIF orientation 6: displayed 40 wide, 80 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (80, 40), (200, 30, 30)).save(path, "TIFF", exif=exif.tobytes())


def test_a_tiff_with_orientation_6_records_its_displayed_size(world, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rotated_tiff(src / "scan.tif")

    job = importing.import_paths(world.acme, src)

    asset = Asset.objects.get()
    assert job.n_created == 1 and (asset.format, asset.width, asset.height) == ("TIFF", 40, 80)
    with Image.open(asset.thumbnail.path) as thumb:
        assert thumb.size == (40, 80)


def test_a_tiff_is_shown_to_browsers_as_a_jpeg_and_its_original_stays_downloadable(client, world, tmp_path, settings):
    src = tmp_path / "src"
    src.mkdir()
    rotated_tiff(src / "scan.tif")
    importing.import_paths(world.acme, src)
    asset = Asset.objects.get()
    client.force_login(world.vic)

    for _ in range(2):  # made on the first view, read from storage on the second
        shown = b"".join(client.get(reverse("asset_image", args=[asset.pk])).streaming_content)
        with Image.open(io.BytesIO(shown)) as img:
            assert img.format == "JPEG" and img.size == (asset.width, asset.height)
    assert media_files(settings, "displays") == [f"displays/{world.acme.pk}/{asset.sha256[:2]}/{asset.sha256}.jpg"]
    original = client.get(reverse("asset_image", args=[asset.pk]) + "?original=1")
    assert b"".join(original.streaming_content) == (src / "scan.tif").read_bytes()


# --- smaller points (#8, #9, #11, #12) -------------------------------------------------------

def test_when_the_thumbnail_cannot_be_written_the_saved_original_is_removed(world, tmp_path, settings):
    src = tmp_path / "src"
    src.mkdir()
    data = jpeg((20, 30, 40))
    (src / "a.jpg").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    # A file where the thumbnail's folder must go: the disk refuses the thumbnail, not the original.
    blocker = Path(settings.MEDIA_ROOT) / "thumbs" / str(world.acme.pk) / sha[:2]
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")

    job = importing.import_paths(world.acme, src)

    assert job.n_failed == 1 and "could not be processed" in by_file(job)["a.jpg"]["error"]
    assert not Asset.objects.filter(client=world.acme).exists()
    assert media_files(settings, f"assets/{world.acme.pk}") == [], "no original without its row"


def test_an_unreadable_subfolder_is_reported_and_the_rest_imported(world, tmp_path, monkeypatch):
    src = tmp_path / "src"
    for folder in ("ok", "locked"):
        (src / folder).mkdir(parents=True)
        (src / folder / "a.jpg").write_bytes(jpeg((1, 1, 1) if folder == "ok" else (2, 2, 2)))
    real_scandir = os.scandir

    def scandir(path):  # the tests run as root, for whom chmod 000 changes nothing
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    job = importing.import_paths(world.acme, src)

    assert (job.n_created, job.n_failed) == (1, 1), job.errors
    assert "folder can't be read (Permission denied)" in by_file(job)["locked/"]["error"]


def test_dot_and_empty_segments_in_zip_names_are_ignored_not_made_into_tags(world, tmp_path):
    archive = tmp_path / "dirs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("./dot.jpg", jpeg((33, 34, 35)))
        z.writestr("nike/./b.jpg", jpeg((36, 37, 38)))
        z.writestr("nike//c.jpg", jpeg((39, 40, 41)))

    job = importing.import_paths(world.acme, archive, labels_taxonomy=world.brand)

    assert (job.n_created, job.n_failed) == (3, 0), job.errors
    assert tags_by_name() == {"nike/b.jpg": ["nike"], "nike/c.jpg": ["nike"]}
    assert not world.brand.tags.filter(name=".").exists()


def test_the_same_image_in_two_label_folders_gets_one_label_and_a_note_saying_which(world, tmp_path):
    for folder in ("adidas", "nike"):
        (tmp_path / "src" / folder).mkdir(parents=True)
        (tmp_path / "src" / folder / "x.jpg").write_bytes(jpeg((50, 60, 70)))

    job = importing.import_paths(world.acme, tmp_path / "src", labels_taxonomy=world.brand)

    assert (job.n_created, job.n_duplicates, job.n_labeled) == (1, 1, 1)
    [[first]] = tags_by_name().values()  # whichever folder was read first gave the label
    second = ({"adidas", "nike"} - {first}).pop()
    assert by_file(job)[f"{second}/x.jpg"]["error"] == f"same image as a file in '{first}/': labeled '{first}', not '{second}'"


def test_an_empty_zip_or_one_of_only_finder_litter_is_named_and_the_rest_imported(world, shoe_paths, tmp_path):
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()

    job = importing.import_paths(world.acme, empty)

    assert job.state == JobState.SUCCEEDED and job.errors == [
        {"file": "empty.zip", "error": "no images in it", "kind": "skipped"}]
    src = tmp_path / "src"
    (src / "nike").mkdir(parents=True)
    shutil.copy(shoe_paths["train"]["nike"][0], src / "nike" / "good.jpg")
    with zipfile.ZipFile(src / "nike" / "mac.zip", "w") as z:  # what Finder's "Compress" adds beside nothing
        z.writestr("photos/", b"")
        z.writestr("photos/.DS_Store", b"\0\0\0\1Bud1")
        z.writestr("__MACOSX/photos/._a.jpg", b"\0\5\26\7")

    job = importing.import_paths(world.acme, src, labels_taxonomy=world.brand)

    assert by_file(job)["nike/mac.zip"]["error"] == "no images in it" and job.n_failed == 0
    assert tags_by_name() == {"nike/good.jpg": ["nike"]}


def test_a_folder_upload_with_labels_keeps_a_persons_label_and_names_the_folder_that_disagrees(
        client, world, shoe_paths, tmp_path, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    photo = shoe_paths["train"]["adidas"][0]
    (tmp_path / "earlier").mkdir()
    shutil.copy(photo, tmp_path / "earlier" / "a.jpg")
    importing.import_paths(world.acme, tmp_path / "earlier")
    asset = Asset.objects.get()
    labels.save_label(world.brand, asset, [world.brand.tags.get(name="adidas").pk], user=world.olga)
    login(client, world.alice)

    client.post(reverse("import_upload", args=["acme"]), {
        "folder": [upload("moved.jpg", photo.read_bytes())],
        "paths": json.dumps(["picked/nike/moved.jpg"]),
        "taxonomy": str(world.brand.pk),
    })

    job = ImportJob.objects.latest("pk")
    assert (job.n_created, job.n_duplicates, job.n_labeled) == (0, 1, 0), job.errors
    assert [(e["kind"], e["error"]) for e in job.errors] == [
        ("duplicate", f"same bytes as asset #{asset.pk} (a.jpg), not stored again"),
        ("note", f"already labeled 'adidas' (asset #{asset.pk}); its folder says 'nike': kept 'adidas'"),
    ]
    assert tags_by_name() == {"a.jpg": ["adidas"]}


def test_staging_folders_nobody_will_read_are_removed_before_the_next_upload(world, shoe_paths):
    failed = importing.create_job(world.acme, importing.UPLOAD)
    ImportJob.objects.filter(pk=failed.pk).update(state=JobState.FAILED)  # e.g. failed by the sweep
    queued = importing.create_job(world.acme, importing.UPLOAD)
    root = uploads_root()
    old, fresh = root / "incoming-old", root / "incoming-fresh"  # killed requests, and one in progress
    for folder in (importing.staging_dir(failed), importing.staging_dir(queued), old, fresh):
        folder.mkdir(parents=True)
        (folder / "a.jpg").write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))

    new = importing.stage_upload(world.acme, [(upload("b.jpg", jpeg((1, 2, 3))), "")])

    left = sorted(p.name for p in root.iterdir())
    assert left == sorted([str(queued.pk), str(new.pk), "incoming-fresh"])
