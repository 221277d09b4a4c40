"""Imports from folders and ZIPs: real shoe photos, FlickrLogos duplicates, and a corpus of bad
files made with Pillow. Embedding runs for real, so every import here stays small."""
from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zipfile
import zlib
from collections import defaultdict
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from labeling.models import Asset, ImportJob, JobState, Label, Tag, Taxonomy
from labeling.services import folder_labels, importing, labels


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with (almost) no pixel data: only a decoder that
    trusts the header before checking it would try to allocate the image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def exif_jpeg(path: Path, size: tuple[int, int], orientation: int) -> None:
    img = Image.new("RGB", size, (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, size[0] // 4, size[1]))  # a stripe, so rotation is visible
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", exif=exif.tobytes())


def write_corpus(root: Path, shoe: Path) -> dict[str, str]:
    """Bad and awkward files under root; returns {relative name: expected words of its error}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.jpg").write_text("this is a text file with a .jpg name\n")
    (root / "empty.jpg").write_bytes(b"")
    data = shoe.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "bomb.png").write_bytes(png_header(12_000, 10_000))  # 120 MP: header only
    (root / "huge.png").write_bytes(png_header(40_000, 40_000))  # past Pillow's own hard limit
    (root / "strip.png").write_bytes(png_header(30_000, 10))
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.new("I;16", (50, 40), 40_000).save(root / "sixteen.png")
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(root / "palette.png", transparency=0)
    frames = [Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._cmyk.jpg").write_bytes(b"\0\5\26\7")
    (root / "readme.txt").write_text("not an image")
    return {
        "notes.jpg": "not an image",
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "bomb.png": "too large",
        "huge.png": "too large: 1,600,000,000 pixels, over the limit of",  # Pillow's guard, in our words
        "strip.png": "aspect ratio",
        "readme.txt": "not an image type",
    }


def by_file(job: ImportJob) -> dict[str, dict]:
    return {e["file"]: e for e in job.errors}


def test_bad_corpus_is_reported_and_the_rest_imported(world, shoe_paths, tmp_path, client):
    shoes = shoe_paths["train"]["nike"][:3]
    src = tmp_path / "src"
    expected = write_corpus(src, shoes[0])
    for p in shoes:
        shutil.copy(p, src / p.name)

    job = importing.import_paths(world.acme, src)

    assert job.state == JobState.SUCCEEDED, job.error
    errors = by_file(job)
    for name, words in expected.items():
        assert name in errors, f"{name} not reported: {job.errors}"
        assert words in errors[name]["error"], errors[name]
    assert not any("DS_Store" in f or "MACOSX" in f for f in errors), "hidden files are skipped silently"
    assert errors["readme.txt"]["kind"] == "skipped"
    assert job.n_failed == len(expected) - 1  # readme.txt is a note, not a failure
    client.force_login(world.alice)  # the job page does not call it a plain success
    page = client.get(f"/c/acme/imports/{job.pk}/").content.decode()
    assert f"Succeeded, {job.n_failed} files failed" in page and page.count('class="pill pill-bad"') == job.n_failed
    good = {p.name for p in shoes} | {"cmyk.jpg", "sixteen.png", "palette.png", "anim.gif"}
    assets = {a.original_name: a for a in Asset.objects.filter(client=world.acme)}
    assert set(assets) == good
    assert job.n_created == len(good) and job.processed == job.total == len(good) + len(expected)

    for name, asset in assets.items():
        original = (src / name).read_bytes()
        assert asset.file.read() == original, "the stored file is the uploaded bytes"
        assert asset.sha256 == hashlib.sha256(original).hexdigest() and asset.byte_size == len(original)
        with Image.open(asset.thumbnail.path) as thumb:
            assert thumb.format == "JPEG" and thumb.mode == "RGB"
            assert thumb.size == (asset.width, asset.height)  # all small: no downscaling
    formats = [assets[n].format for n in ("cmyk.jpg", "sixteen.png", "palette.png", "anim.gif")]
    assert formats == ["JPEG", "PNG", "PNG", "GIF"]
    with Image.open(assets["anim.gif"].thumbnail.path) as thumb:
        assert thumb.getpixel((5, 5))[0] > 200, "first frame (red)"
    with Image.open(assets["palette.png"].thumbnail.path) as thumb:
        assert min(thumb.getpixel((5, 5))) > 240, "transparent palette entry composited on white"
    with Image.open(assets["sixteen.png"].thumbnail.path) as thumb:
        assert 140 < thumb.getpixel((5, 5))[0] < 170, "16-bit greys scaled, not clipped to white"


def test_exif_orientation_gives_displayed_size(world, tmp_path, settings):
    settings.TAGLOOP_THUMB_SIZE = 100
    src = tmp_path / "src"
    src.mkdir()
    exif_jpeg(src / "rotated.jpg", (400, 200), orientation=6)
    exif_jpeg(src / "upright.jpg", (300, 150), orientation=1)

    job = importing.import_paths(world.acme, src)

    assert job.n_created == 2, job.errors
    rotated = Asset.objects.get(original_name="rotated.jpg")
    assert (rotated.width, rotated.height) == (200, 400)
    assert rotated.file.read() == (src / "rotated.jpg").read_bytes()
    with Image.open(rotated.thumbnail.path) as thumb:
        assert thumb.size == (50, 100)  # portrait, longest side TAGLOOP_THUMB_SIZE
        left, right = thumb.getpixel((25, 5)), thumb.getpixel((25, 95))
        assert left[2] > 150 > right[2] or right[2] > 150 > left[2]  # the stripe moved to top or bottom
    upright = Asset.objects.get(original_name="upright.jpg")
    assert (upright.width, upright.height) == (300, 150)
    with Image.open(upright.thumbnail.path) as thumb:
        assert thumb.size == (100, 50)


@pytest.fixture(scope="module")
def logo_twins(datasets_dir) -> tuple[Path, Path, Path]:
    """Two byte-identical FlickrLogos files and one other."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in sorted((datasets_dir / "flickrlogos27" / "images").glob("*.jpg")):
        groups[hashlib.sha256(p.read_bytes()).hexdigest()].append(p)
    twins = next(g for g in groups.values() if len(g) >= 2)
    single = next(g[0] for g in groups.values() if len(g) == 1)
    return twins[0], twins[1], single


def test_identical_files_stored_once_within_and_across_imports(world, logo_twins, tmp_path):
    src = tmp_path / "logos"
    src.mkdir()
    for p in logo_twins:
        shutil.copy(p, src / p.name)

    first = importing.import_paths(world.acme, src)
    assert (first.n_created, first.n_duplicates, first.n_failed) == (2, 1, 0), first.errors
    again = importing.import_paths(world.acme, src)
    assert (again.n_created, again.n_duplicates) == (0, 3)
    assert Asset.objects.filter(client=world.acme).count() == 2
    other = importing.import_paths(world.globex, src)
    assert other.n_created == 2, "dedup is per client"


def test_labels_from_folders(world, shoe_paths, tmp_path):
    src = tmp_path / "shoes"
    picked = {"adidas": shoe_paths["train"]["adidas"][:2], "NIKE": shoe_paths["train"]["nike"][:2],
              "puma": shoe_paths["train"]["converse"][:1]}
    for folder, paths in picked.items():
        (src / folder).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, src / folder / p.name)
    root_file = shoe_paths["test"]["converse"][0]
    shutil.copy(root_file, src / "top.jpg")
    # Imported earlier without a label: the folder import labels it although it's a duplicate.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    shutil.copy(picked["adidas"][0], earlier / "x.jpg")
    importing.import_paths(world.acme, earlier)

    calls = []
    job = importing.import_paths(world.acme, src, user=world.alice, labels_taxonomy=world.brand,
                                 progress=lambda done, total: calls.append((done, total)))

    assert job.state == JobState.SUCCEEDED and job.n_failed == 0, job.errors
    assert calls == [(i, 6) for i in range(1, 7)]
    assert all(Asset.objects.values_list("embedded_with", flat=True)), "new assets are embedded"
    assert (job.n_created, job.n_duplicates, job.n_labeled) == (5, 1, 5)
    current = {
        lab.asset.original_name: [t.name for t in lab.tags.all()]
        for lab in Label.objects.filter(taxonomy=world.brand, is_current=True).select_related("asset")
    }
    assert current == {
        "x.jpg": ["adidas"], "adidas/" + picked["adidas"][1].name: ["adidas"],
        **{f"NIKE/{p.name}": ["nike"] for p in picked["NIKE"]},
        **{f"puma/{p.name}": ["puma"] for p in picked["puma"]},
    }
    assert "top.jpg" not in current, "files in the root get no label"
    labels = Label.objects.filter(taxonomy=world.brand)
    assert {lab.source for lab in labels} == {Label.Source.IMPORTED} and {lab.user for lab in labels} == {world.alice}
    assert Tag.objects.filter(taxonomy=world.brand, name__iexact="nike").count() == 1
    assert Tag.objects.filter(taxonomy=world.brand, name="puma").exists()
    assert any(e["kind"] == "note" and "puma" in e["error"] for e in job.errors)


def test_zip_unsafe_nested_and_bomb_entries(world, shoe_paths, tmp_path):
    shoes = shoe_paths["test"]["adidas"][:2]
    archive = tmp_path / "in" / "upload.zip"
    archive.parent.mkdir()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("deep.jpg", shoes[0].read_bytes())
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("adidas/" + shoes[0].name, shoes[0].read_bytes())
        z.writestr("../evil.jpg", shoes[1].read_bytes())
        z.writestr("/abs.jpg", shoes[1].read_bytes())
        z.writestr("more/inner.zip", inner.getvalue())
        z.writestr("__MACOSX/adidas/._x.jpg", b"\0\5\26\7")
        z.writestr("adidas/.DS_Store", b"\0")
        z.writestr("zeros.jpg", b"\0" * (8 * 1024 * 1024))  # inflates ~1000x: a ZIP bomb member
        z.writestr("adidas/broken.jpg", b"GIF89a not really")

    job = importing.import_paths(world.acme, archive, labels_taxonomy=world.brand)

    assert job.state == JobState.SUCCEEDED, job.error
    errors = by_file(job)
    assert "unsafe path" in errors["../evil.jpg"]["error"] and "unsafe path" in errors["/abs.jpg"]["error"]
    assert "ZIP inside a ZIP" in errors["more/inner.zip"]["error"]
    assert "ZIP bomb" in errors["zeros.jpg"]["error"]
    assert "adidas/broken.jpg" in errors
    assert set(errors) == {"../evil.jpg", "/abs.jpg", "more/inner.zip", "zeros.jpg", "adidas/broken.jpg"}
    assert not (tmp_path / "evil.jpg").exists() and not Path("/abs.jpg").exists()
    assert list(Asset.objects.values_list("original_name", flat=True)) == ["adidas/" + shoes[0].name]
    assert job.n_labeled == 1


def test_zip_bigger_than_the_import_limit_fails_before_inflating(world, shoe_paths, tmp_path, settings):
    settings.TAGLOOP_IMPORT_MAX_BYTES = 10_000
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in shoe_paths["test"]["nike"][:3]:
            z.write(p, p.name)
    job = importing.import_paths(world.acme, archive)
    assert job.state == JobState.FAILED and "ZIP bomb guard" in job.error
    assert not Asset.objects.exists()


def test_missing_or_unreadable_source_fails_the_job(world, tmp_path):
    job = importing.import_paths(world.acme, tmp_path / "nope")
    assert job.state == JobState.FAILED and "source not found" in job.error and job.finished
    (tmp_path / "fake.zip").write_text("not a zip")
    job = importing.import_paths(world.acme, tmp_path / "fake.zip")
    assert job.state == JobState.FAILED and "fake.zip is not a readable ZIP archive" in job.error
    (tmp_path / "notes.txt").write_text("not a zip")
    job = importing.import_paths(world.acme, tmp_path / "notes.txt")
    assert job.state == JobState.FAILED and "neither a folder nor a ZIP" in job.error


def test_a_job_runs_once(world, shoe_paths, tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(shoe_paths["train"]["adidas"][0], src / "a.jpg")
    job = importing.import_paths(world.acme, src)
    again = importing.run_job(job.pk)  # e.g. a redelivered Celery message
    assert again.state == JobState.SUCCEEDED and again.finished == job.finished
    assert Asset.objects.count() == 1


def test_management_command_prints_progress_and_report(world, shoe_paths, tmp_path):
    src = tmp_path / "cmd"
    (src / "converse").mkdir(parents=True)
    for p in shoe_paths["test"]["converse"][:3]:
        shutil.copy(p, src / "converse" / p.name)
    (src / "converse" / "bad.jpg").write_text("nope")
    out, err = StringIO(), StringIO()

    call_command("import_assets", "acme", str(src), "--labels-from-folders", "brand", "--user", "alice",
                 stdout=out, stderr=err)

    text = out.getvalue()
    assert "3 created, 0 duplicates, 1 failed, 3 labeled (of 4 files)" in text
    assert "converse/bad.jpg: not an image" in text
    assert ImportJob.objects.get().created_by == world.alice
    with pytest.raises(CommandError, match="source not found"):
        call_command("import_assets", "acme", str(tmp_path / "missing"), stdout=out, stderr=err)
    with pytest.raises(CommandError, match="no taxonomy 'colour'"):
        call_command("import_assets", "acme", str(src), "--labels-from-folders", "colour", stdout=out, stderr=err)


# --- files seen before: named, and never relabeled against a person ----------------------------

def lines(job: ImportJob, kind: str) -> list[str]:
    return [f"{e['file']}: {e['error']}" for e in job.errors if e["kind"] == kind]


def current_tags(taxonomy) -> dict[str, list[str]]:
    return {lab.asset.original_name: sorted(t.name for t in lab.tags.all())
            for lab in Label.objects.filter(taxonomy=taxonomy, is_current=True).select_related("asset")}


def test_each_duplicate_is_named_with_the_asset_it_repeats_and_past_the_limit_summed_up(
        world, shoe_paths, tmp_path, monkeypatch):
    photos = shoe_paths["train"]["nike"][:3]
    for folder in ("first", "copies"):
        (tmp_path / folder).mkdir()
        for p in photos:
            shutil.copy(p, tmp_path / folder / (p.name if folder == "first" else f"copy-{p.name}"))
    importing.import_paths(world.acme, tmp_path / "first")
    ids = {a.original_name: a.pk for a in Asset.objects.all()}

    job = importing.import_paths(world.acme, tmp_path / "copies")

    assert job.n_duplicates == 3 and lines(job, "duplicate") == [
        f"copy-{p.name}: same bytes as asset #{ids[p.name]} ({p.name}), not stored again" for p in photos]
    monkeypatch.setattr(importing, "MAX_DUPLICATES_NAMED", 1)
    job = importing.import_paths(world.acme, tmp_path / "copies")
    assert job.n_duplicates == 3 and lines(job, "duplicate") == [
        f"copy-{photos[0].name}: same bytes as asset #{ids[photos[0].name]} ({photos[0].name}), not stored again",
        "…: 2 more files with the same bytes as an image already stored, not stored again (not named one by one)"]


def test_a_reimported_file_labeled_otherwise_keeps_its_label_and_the_report_says_which(world, shoe_paths, tmp_path):
    a, b = shoe_paths["train"]["adidas"][:2]
    (tmp_path / "first" / "adidas").mkdir(parents=True)
    for p in (a, b):
        shutil.copy(p, tmp_path / "first" / "adidas" / p.name)
    importing.import_paths(world.acme, tmp_path / "first", labels_taxonomy=world.brand)
    asset_a, asset_b = (Asset.objects.get(original_name=f"adidas/{p.name}") for p in (a, b))
    labels.save_label(world.brand, asset_b, [world.brand.tags.get(name="converse").pk], user=world.olga)
    again = tmp_path / "again"
    for folder, name, photo in (("nike", "moved.jpg", a), ("adidas", "b.jpg", b), ("converse", "b-too.jpg", b)):
        (again / folder).mkdir(parents=True)
        shutil.copy(photo, again / folder / name)
    out = StringIO()

    call_command("import_assets", "acme", str(again), "--labels-from-folders", "brand", stdout=out, stderr=StringIO())

    text = out.getvalue()
    assert "0 created, 3 duplicates, 0 failed, 0 labeled (of 3 files)" in text
    assert (f"nike/moved.jpg: already labeled 'adidas' (asset #{asset_a.pk}); its folder says 'nike': "
            "kept 'adidas'") in text
    assert (f"adidas/b.jpg: already labeled 'converse' (asset #{asset_b.pk}); its folder says 'adidas': "
            "kept 'converse'") in text
    assert "converse/b-too.jpg: already" not in text, "its folder agrees with the label"
    assert current_tags(world.brand) == {asset_a.original_name: ["adidas"], asset_b.original_name: ["converse"]}


@pytest.fixture
def look(world) -> Taxonomy:
    return Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)


def sorted_into(root: Path, layout: dict[str, list[Path]]) -> None:
    for folder, photos in layout.items():
        (root / folder).mkdir(parents=True)
        for p in photos:
            shutil.copy(p, root / folder / p.name)


@pytest.mark.parametrize("batch", [200, 1], ids=["label-not-saved-yet", "label-saved-already"])
def test_the_same_image_in_several_folders_of_a_multi_label_taxonomy_gets_every_folders_tag(
        world, shoe_paths, tmp_path, monkeypatch, look, batch):
    monkeypatch.setattr(folder_labels, "LABEL_BATCH", batch)
    p, q, r = shoe_paths["train"]["converse"][:3]
    (tmp_path / "earlier").mkdir()
    shutil.copy(r, tmp_path / "earlier" / "r.jpg")
    importing.import_paths(world.acme, tmp_path / "earlier")
    person = labels.save_label(look, Asset.objects.get(), [Tag.objects.create(taxonomy=look, name="red").pk],
                               user=world.olga)
    sorted_into(tmp_path / "src", {"red": [p], "round": [p, q, r], "shiny": [p]})

    job = importing.import_paths(world.acme, tmp_path / "src", labels_taxonomy=look)

    assert (job.n_created, job.n_duplicates, job.n_labeled) == (2, 3, 2), job.errors
    assert current_tags(look) == {f"red/{p.name}": ["red", "round", "shiny"], f"round/{q.name}": ["round"],
                                  "r.jpg": ["red"]}
    assert Label.objects.get(taxonomy=look, is_current=True, asset__original_name="r.jpg") == person
    assert (f"round/{r.name}: already labeled 'red' (asset #{person.asset_id}); its folder says 'round': kept 'red'"
            in lines(job, "note"))


def test_a_label_a_person_changes_during_the_import_is_not_grown_by_a_later_folder(
        world, shoe_paths, tmp_path, monkeypatch, look):
    monkeypatch.setattr(folder_labels, "LABEL_BATCH", 1)  # each label is saved before the next file is read
    p = shoe_paths["train"]["nike"][0]
    sorted_into(tmp_path / "src", {"red": [p], "round": [p]})
    shiny = Tag.objects.create(taxonomy=look, name="shiny")

    def person_relabels(done: int, total: int) -> None:
        if done == 1:  # between red/ and round/: an operator says it is shiny
            labels.save_label(look, Asset.objects.get(), [shiny.pk], user=world.olga)

    job = importing.import_paths(world.acme, tmp_path / "src", labels_taxonomy=look, progress=person_relabels)

    assert current_tags(look) == {f"red/{p.name}": ["shiny"]}
    assert Label.objects.get(taxonomy=look, is_current=True).user == world.olga
    assert (f"round/{p.name}: already labeled 'shiny' (asset #{Asset.objects.get().pk}); its folder says 'round': "
            "kept 'shiny'") in lines(job, "note")


def test_an_image_a_person_labels_while_its_import_runs_keeps_the_persons_label(world, shoe_paths, tmp_path):
    nike, adidas = shoe_paths["train"]["nike"][0], shoe_paths["train"]["adidas"][0]
    sorted_into(tmp_path / "src", {"nike": [nike], "adidas": [adidas]})
    converse = Tag.objects.get(taxonomy=world.brand, name="converse")

    def person_labels_the_first(done: int, total: int) -> None:
        if done == 1:  # the import's labels are saved in batches: this one is still waiting
            first = Asset.objects.order_by("pk").first()
            labels.save_label(world.brand, first, [converse.pk], user=world.olga)

    job = importing.import_paths(world.acme, tmp_path / "src", labels_taxonomy=world.brand,
                                 progress=person_labels_the_first)

    first = Asset.objects.order_by("pk").first()
    tags = current_tags(world.brand)
    assert tags[first.original_name] == ["converse"] and len(tags) == 2 and job.n_labeled == 1
    assert Label.objects.get(asset=first, is_current=True).user == world.olga
    assert any(f"(asset #{first.pk}); its folder says" in line and "kept 'converse'" in line
               for line in lines(job, "note"))
