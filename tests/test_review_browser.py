"""The review page in a real browser: log in, accept with Enter, correct with a digit, undo.

Real shoe images go through the real import and a first model from the real training
service; Debian's Chromium is driven through Playwright. Screenshots go to
$TAGLOOP_SCREENSHOTS (default: the test's tmp_path) for a human to look at.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

# Playwright's sync API runs an event loop in this thread; Django would otherwise refuse
# the ORM calls the test makes between browser steps.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = os.environ.get("TAGLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"]
PER_BRAND, SEED_PER_BRAND = 4, 2

pytestmark = pytest.mark.browser


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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


IMAGE_SHOWN = """() => {
  const img = document.getElementById('current-img');
  return !img.hidden && img.complete && img.naturalWidth > 0 && document.getElementById('review').dataset.asset !== '';
}"""


def wait_for(predicate: Callable[[], object], timeout: float = 10.0):
    """Poll the database until the browser's request has landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the database")


def current_label(asset_id: int):
    from labeling.models import Label

    return Label.objects.filter(asset_id=asset_id, is_current=True).prefetch_related("tags").first()


def showing(page) -> tuple[int, int | None]:
    """(asset on screen, tag id marked as suggested)."""
    page.wait_for_function(IMAGE_SHOWN)
    asset = int(page.locator("#review").get_attribute("data-asset"))
    suggested = page.locator(".tag.suggested")
    return asset, int(suggested.first.get_attribute("data-tag")) if suggested.count() else None


def test_review_keyboard_flow(reviewable, live_server, browser, shots):
    world = reviewable
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)  # two shared CPU cores: be patient
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{live_server.url}/login/")
    shots(page, "01-login")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "olga-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/c/acme/")
    shots(page, "02-client-home")

    page.click(f"a[href='/c/acme/t/{world.brand.pk}/review/']")
    first, suggested = showing(page)
    assert suggested is not None
    assert page.locator(".tag").count() == 3
    assert page.locator("#upnext img").count() >= 3  # the buffer is prefetched
    shots(page, "03-review")

    # Enter accepts what the page shows as suggested.
    page.keyboard.press("Enter")
    label = wait_for(lambda: current_label(first))
    assert label.source == "accepted" and [t.pk for t in label.tags.all()] == [suggested]
    assert label.user_id == world.olga.pk
    page.wait_for_selector("#toast:has-text('(accepted)')")
    second, suggested2 = showing(page)
    assert second != first
    shots(page, "04-accepted-toast")

    # A digit of a tag that is not the suggestion stores a correction with that tag.
    other = page.locator(".tag:not(.suggested)").first
    key, picked = other.locator("kbd").inner_text().strip(), int(other.get_attribute("data-tag"))
    assert picked != suggested2
    page.keyboard.press(key)
    label = wait_for(lambda: current_label(second))
    assert label.source == "corrected" and [t.pk for t in label.tags.all()] == [picked]
    page.wait_for_selector("#toast:has-text('(corrected)')")

    # u undoes the last label and brings that image back to the front.
    page.keyboard.press("u")
    wait_for(lambda: current_label(second) is None)
    page.wait_for_function(f"() => document.getElementById('review').dataset.asset === '{second}'")
    assert current_label(first) is not None
    page.wait_for_function(IMAGE_SHOWN)
    shots(page, "05-undone")

    page.keyboard.press("?")
    page.wait_for_selector("#help[open]")
    shots(page, "06-shortcuts")
    page.keyboard.press("Escape")

    # Skipping everything left ends in the "all done" state.
    for _ in range(3 * (PER_BRAND - SEED_PER_BRAND) - 1):
        page.wait_for_function(IMAGE_SHOWN)
        page.keyboard.press("s")
    page.wait_for_selector("#done:not([hidden])")
    shots(page, "07-all-done")
    page.close()
    assert errors == [], errors
