"""A ZIP export imported back with labels (restoring a backup, moving a library to another
client) gets its tags from the export's manifest, labels.csv: child tags under their parents,
every tag of a multi-label image, images saved with no tag, and the tags whose folder names were
made safe or unique. Real shoe photos; each import embeds them, so the libraries stay small."""
from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labeling.models import Client, ImportJob, JobState, Label, Tag, Taxonomy
from labeling.services import exporting, importing, labels, manifest
from tests._helpers import make_asset

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quiet(monkeypatch, settings, tmp_path):
    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: False)
    settings.VAR_DIR = tmp_path / "var"  # uploads are staged under VAR_DIR/uploads


def library(client: Client, taxonomy: Taxonomy, photos: list[Path], tag_sets: list[tuple[Tag, ...]]) -> list:
    """An asset per photo (its real bytes and sha256), labeled with its tag set."""
    assets = []
    for i, (photo, tags) in enumerate(zip(photos, tag_sets, strict=True)):
        data = photo.read_bytes()
        asset = make_asset(client, i, name=f"shots/{photo.name}", data=data, sha=hashlib.sha256(data).hexdigest())
        labels.save_label(taxonomy, asset, [t.pk for t in tags])
        assets.append(asset)
    return assets


def tags(taxonomy: Taxonomy, *paths: str) -> dict[str, Tag]:
    """Tags made from their paths, parents first: tags(t, 'vehicle', 'vehicle / car')."""
    made: dict[str, Tag] = {}
    for path in paths:
        *parent, name = path.split(" / ")
        above = made[" / ".join(parent)] if parent else None
        made[path] = Tag.objects.create(taxonomy=taxonomy, name=name, parent=above)
    return made


def paths_by_sha(client: Client, taxonomy: Taxonomy) -> dict[str, list[str]]:
    return {lab.asset.sha256: sorted(t.path for t in lab.tags.all())
            for lab in Label.objects.filter(taxonomy=taxonomy, asset__client=client, is_current=True)
            .select_related("asset").prefetch_related("tags")}


def lines(job: ImportJob, kind: str = "note") -> list[str]:
    return [f"{e['file']}: {e['error']}" for e in job.errors if e["kind"] == kind]


def export(taxonomy: Taxonomy, folder: Path) -> Path:
    archive = folder / f"{taxonomy.name}.zip"
    archive.write_bytes(b"".join(exporting.stream_zip(taxonomy)))
    return archive


def read_manifest(archive: Path) -> dict[str, dict]:
    with zipfile.ZipFile(archive) as zf:
        return {r["file_in_zip"]: r for r in csv.DictReader(io.StringIO(zf.read("labels.csv").decode()))}


@pytest.fixture
def looks(world, shoe_paths, tmp_path) -> SimpleNamespace:
    """acme's multi-label taxonomy 'look' with a tag tree, tags whose folders are made safe
    ('AC/DC' -> 'AC_DC') or unique ('C++', 'C#' -> 'C_-<id>'), five labeled photos (one with no
    tag), and its ZIP export."""
    look = Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)
    t = tags(look, "vehicle", "vehicle / car", "red", "C++", "C#", "AC/DC")
    sets = [(t["vehicle / car"], t["red"]), (t["vehicle"],), (), (t["C++"], t["C#"], t["AC/DC"]), (t["C#"],)]
    photos = shoe_paths["train"]["converse"][:5]
    assets = library(world.acme, look, photos, sets)
    return SimpleNamespace(taxonomy=look, tags=t, assets=assets, photos=photos, archive=export(look, tmp_path))


def fresh_taxonomy(client: Client, name: str = "look", multi: bool = True) -> Taxonomy:
    kind = Taxonomy.Kind.MULTI if multi else Taxonomy.Kind.SINGLE
    return Taxonomy.objects.create(client=client, name=name, kind=kind)


def unzip(archive: Path, folder: Path) -> Path:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    return folder


def upload(world, archive: Path, taxonomy: Taxonomy) -> ImportJob:
    """As the import page sends a ZIP: staged into a folder of the job, then run."""
    sent = SimpleUploadedFile(archive.name, archive.read_bytes(), content_type="application/zip")
    job = importing.stage_upload(world.globex, [(sent, "")], labels_taxonomy=taxonomy)
    return importing.run_job(job.pk)


@pytest.mark.parametrize("how", ["zip", "extracted folder", "browser upload"])
def test_a_hierarchical_multi_label_export_comes_back_whole_in_a_fresh_client(world, looks, tmp_path, how):
    fresh = fresh_taxonomy(world.globex)
    if how == "zip":
        job = importing.import_paths(world.globex, looks.archive, labels_taxonomy=fresh)
    elif how == "extracted folder":
        job = importing.import_paths(world.globex, unzip(looks.archive, tmp_path / "x"), labels_taxonomy=fresh)
    else:
        job = upload(world, looks.archive, fresh)

    assert job.state == JobState.SUCCEEDED and (job.n_created, job.n_failed, job.n_labeled) == (5, 0, 5), job.errors
    assert job.total == 8, "8 files (a multi-label image in each of its tags' folders); the manifest is not one"
    assert paths_by_sha(world.globex, fresh) == paths_by_sha(world.acme, looks.taxonomy)
    assert sorted(t.path for t in fresh.tags.all()) == sorted(looks.tags), "no 'vehicle__car', 'C_-7' or 'AC_DC'"
    assert fresh.tags.get(name="car").parent == fresh.tags.get(name="vehicle")
    no_tag = Label.objects.get(taxonomy=fresh, asset__sha256=looks.assets[2].sha256, is_current=True)
    assert list(no_tag.tags.all()) == [] and no_tag.source == Label.Source.IMPORTED
    assert not lines(job, "skipped"), "labels.csv is ours, not a skipped file"
    new = [line for line in lines(job) if "new tag" in line]
    assert len(new) == 6 and "labels.csv: new tag 'vehicle / car' created in taxonomy 'look'" in "\n".join(new)


def test_the_zip_puts_an_image_saved_with_no_tag_in_a_folder_no_tag_can_have(world, looks):
    rows = read_manifest(looks.archive)
    none = looks.assets[2]
    [name] = [n for n in rows if rows[n]["asset_id"] == str(none.pk)]
    assert name == f"look/(no tags)/{none.pk}-{looks.photos[2].name}"
    assert (rows[name]["tags"], rows[name]["tag_ids"]) == ("", "")
    t = looks.tags
    folders = {n.split("/")[1] for n in rows}
    assert folders == {"vehicle", "vehicle__car", "red", f"C_-{t['C++'].pk}", f"C_-{t['C#'].pk}", "AC_DC", "(no tags)"}
    assert exporting.safe_name("(no tags)") != "(no tags)", "a tag named so gets another folder"


def test_a_single_label_export_comes_back_with_its_child_tags_and_formula_like_names(world, shoe_paths, tmp_path):
    kind = fresh_taxonomy(world.acme, "kind", multi=False)
    t = tags(kind, "shoes", "shoes / sneaker", "C++", "C#", "+1")
    photos = shoe_paths["train"]["nike"][:4]
    library(world.acme, kind, photos, [(t["shoes / sneaker"],), (t["C++"],), (t["C#"],), (t["+1"],)])
    archive = export(kind, tmp_path)
    assert {r["tags"] for r in read_manifest(archive).values()} == {"shoes / sneaker", "C++", "C#", "'+1"}
    fresh = fresh_taxonomy(world.globex, "kind", multi=False)

    job = importing.import_paths(world.globex, archive, labels_taxonomy=fresh)

    assert (job.n_created, job.n_labeled) == (4, 4), job.errors
    assert paths_by_sha(world.globex, fresh) == paths_by_sha(world.acme, kind)
    assert sorted(t.path for t in fresh.tags.all()) == ["+1", "C#", "C++", "shoes", "shoes / sneaker"]


@pytest.mark.parametrize("value", ["plain", "=SUM(A1)", "-1", "'quoted", "'=not a formula", "''@x", ""])
def test_a_manifest_cell_reads_back_as_the_value_written(value):
    written = manifest.cell(value)
    assert manifest.read_cell(written) == value
    assert not written.startswith(manifest.FORMULA_START), "a spreadsheet opens it as text"


def test_the_tags_of_existing_tags_are_found_by_path_whatever_their_case(world, looks):
    fresh = fresh_taxonomy(world.globex)
    have = tags(fresh, "Vehicle", "Vehicle / CAR", "RED")

    job = importing.import_paths(world.globex, looks.archive, labels_taxonomy=fresh)

    assert job.n_labeled == 5, job.errors
    first = Label.objects.get(taxonomy=fresh, asset__sha256=looks.assets[0].sha256, is_current=True)
    assert set(first.tags.all()) == {have["Vehicle / CAR"], have["RED"]}
    assert fresh.tags.count() == 6, "only C++, C# and AC/DC were made"


def test_a_label_a_person_gave_is_kept_and_the_report_names_what_the_manifest_says(world, looks, tmp_path):
    fresh = fresh_taxonomy(world.globex)
    blue = Tag.objects.create(taxonomy=fresh, name="blue")
    (tmp_path / "earlier").mkdir()
    for i in (0, 2):  # already in globex, unlabeled; then a person labels them 'blue'
        (tmp_path / "earlier" / f"{i}.jpg").write_bytes(looks.photos[i].read_bytes())
    importing.import_paths(world.globex, tmp_path / "earlier")
    for i in (0, 2):
        asset = world.globex.assets.get(sha256=looks.assets[i].sha256)
        labels.save_label(fresh, asset, [blue.pk], user=world.otto)

    job = importing.import_paths(world.globex, looks.archive, labels_taxonomy=fresh)

    assert (job.n_created, job.n_labeled) == (3, 3), job.errors
    for i in (0, 2):
        label = Label.objects.get(taxonomy=fresh, asset__sha256=looks.assets[i].sha256, is_current=True)
        assert (label.user, [t.name for t in label.tags.all()]) == (world.otto, ["blue"])
    car, none = (world.globex.assets.get(sha256=looks.assets[i].sha256) for i in (0, 2))
    notes = lines(job)
    assert (f"look/vehicle__car/{looks.assets[0].pk}-{looks.photos[0].name}: already labeled 'blue' "
            f"(asset #{car.pk}); labels.csv says 'vehicle / car', 'red': kept 'blue'") in notes
    assert (f"look/(no tags)/{looks.assets[2].pk}-{looks.photos[2].name}: already labeled 'blue' "
            f"(asset #{none.pk}); labels.csv says no tag: kept 'blue'") in notes


def test_an_import_without_a_taxonomy_does_not_call_the_manifest_a_skipped_file(world, looks):
    job = importing.import_paths(world.globex, looks.archive)

    assert job.n_created == 5 and not Label.objects.filter(asset__client=world.globex).exists()
    assert lines(job, "skipped") == []
    assert lines(job) == ["labels.csv: tagloop export manifest: not used, as no taxonomy was picked for labels"]
