"""The review page in a real browser: log in, accept with Enter, correct with a digit, undo;
a multi-label pick through the filter; an open page keeping the leases of what it holds.

Real shoe images go through the real import and a first model from the real training
service; Debian's Chromium is driven through Playwright. Screenshots go to
$TAGLOOP_SCREENSHOTS (default: the test's tmp_path) for a human to look at.
"""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.utils import timezone

from tests._helpers import wait_for
from tests.conftest import PER_BRAND, SEED_PER_BRAND

# Playwright's sync API runs an event loop in this thread; Django would otherwise refuse
# the ORM calls the test makes between browser steps.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = pytest.mark.browser


IMAGE_SHOWN = """() => {
  const img = document.getElementById('current-img');
  return !img.hidden && img.complete && img.naturalWidth > 0 && document.getElementById('review').dataset.asset !== '';
}"""


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

    # After a reload the page holds no history: u still puts the undone image first.
    page.reload()
    showing(page)
    page.keyboard.press("u")
    wait_for(lambda: current_label(first) is None)
    page.wait_for_function(f"() => document.getElementById('review').dataset.asset === '{first}'")
    page.wait_for_selector("#toast:has-text('Undone')")

    # A double-click (on Accept, then on a tag) labels the image it was aimed at, never the
    # next one, unseen, with the second click.
    for button in ("#accept-btn", ".tag:not(.suggested)"):
        aimed, _ = showing(page)
        page.locator(button).first.dblclick()
        wait_for(lambda: current_label(aimed) is not None)
        after, _ = showing(page)
        page.wait_for_timeout(800)  # time for a second save to arrive, were one sent
        assert after != aimed and current_label(after) is None, button

    # The queue order chosen stays chosen over a reload (or Back) in this tab.
    page.click(".seg[data-order='confident']")
    page.reload()
    showing(page)
    assert page.locator(".seg[data-order='confident']").get_attribute("aria-pressed") == "true"

    page.keyboard.press("?")
    page.wait_for_selector("#help[open]")
    shots(page, "06-shortcuts")
    page.keyboard.press("Escape")

    # Skipping everything left ends in the "all done" state.
    for _ in range(3 * (PER_BRAND - SEED_PER_BRAND) - 2):  # both undone, two double-clicked
        page.wait_for_function(IMAGE_SHOWN)
        page.keyboard.press("s")
    page.wait_for_selector("#done:not([hidden])")
    shots(page, "07-all-done")
    page.close()
    assert errors == [], errors


# --- a multi-label taxonomy, and the leases of an open page -----------------------------

COLOURS = ("black", "blue", "green", "grey", "red", "white")  # "gre" matches two


@pytest.fixture
def colours(transactional_db, fast_passwords, world, shoe_paths):
    """acme with six real shoe photos and a multi-label "colour" taxonomy, no model yet (the
    queue comes in content-hash order, tags in taxonomy order: digit 3 is green, 5 is red)."""
    from labeling.models import Tag, Taxonomy
    from tests.test_review_views import make_asset

    for paths in shoe_paths["train"].values():
        for p in paths[:2]:
            make_asset(world.acme, p)
    colour = Taxonomy.objects.create(client=world.acme, name="colour", kind=Taxonomy.Kind.MULTI)
    for i, name in enumerate(COLOURS):
        Tag.objects.create(taxonomy=colour, name=name, position=i)
    world.colour = colour
    return world


def open_review(page, live_server, taxonomy) -> list[str]:
    """Log in as olga and open the taxonomy's review page; returns the page's errors, as they come."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "olga-pass-123")
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/c/acme/t/{taxonomy.pk}/review/")
    return errors


def pressed(page) -> set[str]:
    return set(page.locator(".tag[aria-pressed='true'] .tag-name").all_inner_texts())


FILTER_FOCUSED = "() => document.activeElement === document.getElementById('filter')"


def test_multilabel_a_tag_picked_through_the_filter_gives_the_keyboard_back(colours, live_server, browser, shots):
    world = colours
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = open_review(page, live_server, world.colour)
    first, _ = showing(page)
    assert pressed(page) == set()

    page.keyboard.press("/")
    page.keyboard.type("gre")
    assert page.locator(".tag .tag-name").all_inner_texts() == ["green", "grey"]
    page.keyboard.press("Enter")  # the highlighted first match
    assert pressed(page) == {"green"}
    # the filter is cleared and the keyboard is the page's again: a digit picks, not types
    assert page.input_value("#filter") == "" and not page.evaluate(FILTER_FOCUSED)
    assert page.locator(".tag").count() == len(COLOURS)
    page.keyboard.press("5")
    assert pressed(page) == {"green", "red"} and page.input_value("#filter") == ""
    shots(page, "multilabel-filter-pick")

    page.keyboard.press("Enter")  # saves the selection
    label = wait_for(lambda: current_label(first))
    assert sorted(t.name for t in label.tags.all()) == ["green", "red"] and label.user_id == world.olga.pk
    page.wait_for_selector("#toast:has-text('Saved: green, red')")
    second, _ = showing(page)
    assert second != first

    # Enter on a filter that matches nothing says so, and leaves the text there to correct.
    page.keyboard.press("/")
    page.keyboard.type("purple")
    page.keyboard.press("Enter")
    page.wait_for_selector("#toast:has-text('No tag matches')")
    assert page.evaluate(FILTER_FOCUSED) and page.input_value("#filter") == "purple"
    shots(page, "multilabel-filter-miss")
    page.keyboard.press("Escape")
    assert not page.evaluate(FILTER_FOCUSED) and current_label(second) is None
    page.close()
    assert errors == [], errors


def test_an_open_review_page_keeps_the_leases_of_what_it_holds(colours, live_server, browser):
    """The status poll renews them: minutes on one image do not hand the others to a colleague."""
    from labeling.models import Lease
    from labeling.services import queue
    from tests.test_label_concurrency import _age_leases

    world = colours
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = open_review(page, live_server, world.colour)
    showing(page)
    mine = Lease.objects.filter(taxonomy=world.colour, user=world.olga)
    wait_for(lambda: mine.count() == 5)  # the page's buffer
    _age_leases(queue.LEASE_SECONDS - 10)  # as if olga had looked at the first one for 110 s
    renewed = lambda: mine.filter(expires__gt=timezone.now() + timedelta(seconds=60)).count() == 5  # noqa: E731
    wait_for(renewed, timeout=15)  # a poll (every 4 s) named all five
    page.close()
    assert errors == [], errors


def test_tags_past_the_list_are_counted_with_the_way_to_reach_them(colours, live_server, browser, shots):
    from labeling.models import Tag

    world = colours
    for i in range(15):
        Tag.objects.create(taxonomy=world.colour, name=f"shade {i:02d}", position=100 + i)
    total = world.colour.tags.count()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = open_review(page, live_server, world.colour)
    showing(page)
    assert page.locator(".tag").count() == 12
    assert page.inner_text(".tag-more") == f"{total - 12} more tags: press / and type to find them"
    page.keyboard.press("/")
    page.keyboard.type("shade 14")
    assert page.locator(".tag .tag-name").all_inner_texts() == ["shade 14"] and page.locator(".tag-more").count() == 0
    shots(page, "review-more-tags")
    assert not errors


def test_multilabel_zero_saves_an_image_no_tag_applies_to(colours, live_server, browser, shots):
    world = colours
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = open_review(page, live_server, world.colour)
    first, _ = showing(page)
    page.keyboard.press("Enter")  # nothing selected: says how to answer instead of saving
    page.wait_for_selector("#toast:has-text('or press 0 if none applies')")
    page.keyboard.press("0")
    label = wait_for(lambda: current_label(first))
    assert list(label.tags.all()) == [] and label.user_id == world.olga.pk
    page.wait_for_selector("#toast:has-text('Saved: no tag')")
    assert showing(page)[0] != first
    shots(page, "multilabel-none-applies")
    assert not errors
