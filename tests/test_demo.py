"""`./tagloop.sh demo` (the README's first command) sets up a working demo from the shared datasets."""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from labeling.models import Client, Label, Taxonomy
from tests.conftest import BRANDS, DATASETS


@pytest.mark.skipif(not (DATASETS / "shoes").is_dir(), reason="shared shoes dataset not available")
def test_the_demo_imports_the_shoes_seeds_brands_in_turn_and_evaluates_model_v1(db, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    out = io.StringIO()
    call_command("demo", data=str(DATASETS), password="demo-pass", stdout=out)
    client = Client.objects.get(slug="demo")
    assert client.assets.count() == 825, out.getvalue()
    taxonomy = Taxonomy.objects.get(client=client)
    seeded = list(Label.objects.filter(taxonomy=taxonomy).order_by("pk").prefetch_related("tags"))
    assert len(seeded) == 75
    # brands take turns, so the replay of the labelling order is a fair baseline for v1
    assert [lb.tags.get().name for lb in seeded[:6]] == list(BRANDS) * 2
    live = taxonomy.live_model
    assert live is not None and live.version == 1 and live.metrics["n_holdout"] >= 10
    assert live.metrics["savings"]["labels"][-1] == live.metrics["n_train"]
    assert "Demo ready" in out.getvalue()
    # running it again changes nothing (no second import, no second seed, no second model)
    call_command("demo", data=str(DATASETS), password="demo-pass", stdout=io.StringIO())
    assert client.assets.count() == 825 and Label.objects.filter(taxonomy=taxonomy).count() == 75
    assert taxonomy.versions.count() == 1
