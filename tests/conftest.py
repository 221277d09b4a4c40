"""Shared fixtures: an owner client and an other client, real images from ../shared/datasets.

Everything a test writes (media, vectors, models) goes under a per-test temporary folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("TAGLOOP_DATASETS", REPO.parent / "shared" / "datasets"))
BRANDS = ("adidas", "converse", "nike")


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
    import shutil

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
