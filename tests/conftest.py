"""Shared fixtures: an owner client and an other client, real images from ../shared/datasets,
the API tests' generated library and no-broker stubs, and the browser tests' Chromium.
Plain helper functions are in _helpers.py.

Everything a test writes (media, vectors, models) goes under a per-test temporary folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("TAGLOOP_DATASETS", REPO.parent / "shared" / "datasets"))
BRANDS = ("adidas", "converse", "nike")
CHROMIUM = os.environ.get("TAGLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"]
PER_BRAND, SEED_PER_BRAND = 4, 2  # reviewable: shoes imported / labeled per brand


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not (DATASETS / "shoes").is_dir():
        pytest.skip(f"datasets not found at {DATASETS} (set TAGLOOP_DATASETS)")
    return DATASETS


@pytest.fixture(scope="session")
def shoe_paths(datasets_dir: Path) -> dict[str, dict[str, list[Path]]]:
    """{"train"|"test": {brand: sorted paths}}"""
    return {
        split: {b: sorted((datasets_dir / "shoes" / split / b).glob("*.jpg")) for b in BRANDS}
        for split in ("train", "test")
    }


@pytest.fixture(autouse=True)
def private_dirs(request, tmp_path_factory):
    """Media, vectors and model files of each test live in their own temporary folder."""
    if not {"db", "transactional_db", "live_server"} & set(request.fixturenames):
        # Tests without the database (ml/ unit tests) do not need Django's folders.
        return None
    settings = request.getfixturevalue("settings")
    root = tmp_path_factory.mktemp("var")
    settings.MEDIA_ROOT = root / "media"
    settings.TAGLOOP_VECTOR_DIR = root / "vectors"
    settings.TAGLOOP_MODEL_DIR = root / "models"
    settings.TAGLOOP_CACHE_DIR = Path(os.environ.get("TAGLOOP_TEST_CACHE", Path.home() / ".cache" / "tagloop"))
    return root


def make_user(username: str):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username, password=f"{username}-pass-123")


@pytest.fixture
def world(db, settings):
    """Client "acme" (admin, operator, viewer) with a single-label brand taxonomy, and client
    "globex" with its own operator and taxonomy: the other-client side of every test."""
    from labeling.models import Client, Membership, Role, Tag, Taxonomy

    # PBKDF2 costs 0.6 s a user by design; tests only need passwords that check.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    acme = Client.objects.create(name="Acme", slug="acme")
    globex = Client.objects.create(name="Globex", slug="globex")
    users = {name: make_user(name) for name in ("alice", "olga", "vic", "otto", "nobody")}
    Membership.objects.create(user=users["alice"], client=acme, role=Role.ADMIN)
    Membership.objects.create(user=users["olga"], client=acme, role=Role.OPERATOR)
    Membership.objects.create(user=users["vic"], client=acme, role=Role.VIEWER)
    Membership.objects.create(user=users["otto"], client=globex, role=Role.OPERATOR)
    brand = Taxonomy.objects.create(client=acme, name="brand", retrain_threshold=6)
    for i, b in enumerate(BRANDS):
        Tag.objects.create(taxonomy=brand, name=b, position=i)
    other_tax = Taxonomy.objects.create(client=globex, name="brand")
    Tag.objects.create(taxonomy=other_tax, name="adidas")
    return SimpleNamespace(acme=acme, globex=globex, brand=brand, other_tax=other_tax, **users)


def login(client, user) -> None:
    client.force_login(user)


def copy_shoes(shoe_paths, dest: Path, per_brand: int, split: str = "train", start: int = 0) -> dict[str, str]:
    """Copy a few real shoe photos into dest/<brand>/; returns {relative name: brand}."""
    truth = {}
    for brand in BRANDS:
        (dest / brand).mkdir(parents=True, exist_ok=True)
        for p in shoe_paths[split][brand][start : start + per_brand]:
            shutil.copy(p, dest / brand / p.name)
            truth[f"{brand}/{p.name}"] = brand
    return truth


@pytest.fixture
def shoe_library(world, shoe_paths, tmp_path):
    """Acme's library: 8 real photos per brand imported through the real import service,
    with no labels yet. Returns (assets by id, true brand by asset id)."""
    from labeling.services import importing

    truth = copy_shoes(shoe_paths, tmp_path / "library", per_brand=8)
    job = importing.import_paths(world.acme, tmp_path / "library")
    assert job.n_failed == 0, job.errors
    assets = {a.pk: a for a in world.acme.assets.all()}
    return assets, {a.pk: truth[a.original_name] for a in assets.values()}


@pytest.fixture
def trained(world, shoe_library):
    """shoe_library plus a seed of 2 labels per brand and a live model v1 trained on them."""
    from labeling.models import Label
    from labeling.services import labels, training

    assets, truth = shoe_library
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    seeded = []
    for brand in BRANDS:
        for asset_id in [a for a, b in sorted(truth.items()) if b == brand][:2]:
            labels.save_label(world.brand, assets[asset_id], [tags[brand]], source=Label.Source.IMPORTED)
            seeded.append(asset_id)
    run = training.train_now(world.brand)
    assert run.state == "promoted", run.error
    world.brand.refresh_from_db()
    return SimpleNamespace(assets=assets, truth=truth, tags=tags, seeded=seeded, run=run)


@pytest.fixture
def explored(world, trained, shoe_paths, tmp_path):
    """``trained`` (acme: 24 shoes, 6 labeled, model v1) plus globex holding copies of the
    same photos (same bytes: same vectors), and acme's first clustering."""
    from labeling.services import clusters, importing

    copy_shoes(shoe_paths, tmp_path / "globex", per_brand=3)
    job = importing.import_paths(world.globex, tmp_path / "globex")
    assert job.n_created == 9, job.errors
    clustering = clusters.recluster(world.acme.pk)
    return SimpleNamespace(world=world, clustering=clustering, **vars(trained))


# --- API tests: generated images and a model row with known suggestions ------------------


@pytest.fixture
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def no_broker(monkeypatch):
    """Retrain checks and job messages are counted, never sent: no worker in these tests."""
    from labeling.services import importing, labels, training

    sent = {"retrain": 0, "train": 0, "import": 0}
    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: sent.__setitem__("retrain", sent["retrain"] + 1))
    monkeypatch.setattr(training, "enqueue", lambda run_id: sent.__setitem__("train", sent["train"] + 1))
    monkeypatch.setattr(importing, "enqueue", lambda job: sent.__setitem__("import", sent["import"] + 1))
    return sent


@pytest.fixture
def private_uploads(settings, tmp_path):
    """Staged uploads go under VAR_DIR/uploads/<job id>; job ids restart with each test database,
    so each test stages into its own folder."""
    settings.VAR_DIR = tmp_path / "var"


@pytest.fixture
def lib(world):
    """Six acme assets; a live model row whose suggestion for asset i has uncertainty (i+1)/10 and
    top-1 tag cycling adidas, converse, nike; one globex asset."""
    from labeling.models import ModelVersion, Suggestion
    from tests._helpers import make_asset

    tags = {t.name: t.pk for t in world.brand.tags.all()}
    tag_ids = list(tags.values())
    assets = [make_asset(world.acme, i) for i in range(6)]
    mv = ModelVersion.objects.create(
        taxonomy=world.brand, version=1, backbone="test", artifact="none", tag_ids=tag_ids,
        metrics={"accuracy": 0.8, "accuracy_ci95": [0.6, 0.9], "confusion": [[2, 1, 0], [0, 3, 0], [1, 0, 3]],
                 "labels": list(tags), "per_class": {}, "n_holdout": 10},
    )
    for i, a in enumerate(assets):
        probs = [0.1, 0.1, 0.1]
        probs[i % 3] = 0.8
        Suggestion.objects.create(asset=a, taxonomy=world.brand, model_version=mv, probs=probs,
                                  top1_tag_id=tag_ids[i % 3], top1_prob=0.8, margin=0.7, entropy=0.5,
                                  uncertainty=(i + 1) / 10)
    world.brand.live_model = mv
    world.brand.save(update_fields=["live_model"])
    other = make_asset(world.globex, 99)
    return type("Lib", (), {"assets": assets, "tags": tags, "mv": mv, "other": other})


# --- browser tests: Debian's Chromium through Playwright --------------------------------


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    # Imported here so that tests without a browser do not need Playwright installed.
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        # Inside sync_playwright() this thread runs in another contextvars context, so the ORM
        # calls of the test open their own Django connections; close them before leaving it, or
        # they outlive the test and keep the test database from being dropped.
        from django.db import connections

        connections.close_all()


@pytest.fixture
def shots(tmp_path) -> Callable:
    folder = Path(os.environ.get("TAGLOOP_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path))
        return path

    return shoot


@pytest.fixture
def reviewable(transactional_db, fast_passwords, world, shoe_paths, tmp_path, monkeypatch) -> SimpleNamespace:
    """acme with 12 imported shoes, 2 per brand labeled, and a live first model."""
    importing = pytest.importorskip("labeling.services.importing")
    training = pytest.importorskip("labeling.services.training")
    from labeling.models import Asset
    from labeling.services import labels

    # No broker in this test: a retrain must not be requested behind the test's back.
    monkeypatch.setattr(labels, "request_retrain_check", lambda taxonomy_id: False)
    folder = tmp_path / "shoes"
    for brand, paths in shoe_paths["train"].items():
        (folder / brand).mkdir(parents=True)
        for p in paths[:PER_BRAND]:
            shutil.copy(p, folder / brand / f"{brand}-{p.name}")  # names tell the brand
    importing.import_paths(world.acme, folder, labels_taxonomy=None)
    assets = list(Asset.objects.filter(client=world.acme).order_by("id"))
    assert len(assets) == 3 * PER_BRAND
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    seeded: dict[str, int] = {}
    for asset in assets:
        brand = asset.original_name.rsplit("/", 1)[-1].split("-", 1)[0]
        if seeded.get(brand, 0) < SEED_PER_BRAND:
            labels.save_label(world.brand, asset, [tags[brand]], user=world.alice)
            seeded[brand] = seeded.get(brand, 0) + 1
    run = training.train_now(world.brand)
    assert run.state == "promoted", (run.state, run.error)
    return world
