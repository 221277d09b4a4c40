"""The audit in a real browser: the operator switches the review page to the random sample with
the keyboard, accepts and corrects with it, and the dashboard's card shows the estimate.

Real shoe photos, the real import and a first model from the real training service (conftest's
``trained``); Debian's Chromium through Playwright. Screenshots go to $TAGLOOP_SCREENSHOTS.
"""
from __future__ import annotations

import os

import pytest

from labeling.models import Label
from ml.metrics import wilson_ci
from tests._helpers import wait_for
from tests.test_audit import unlabeled_scored_by_hash
from tests.test_review_browser import colours, open_review, showing  # noqa: F401 (colours: a fixture)

# Playwright's sync API runs an event loop in this thread (see test_review_browser).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = pytest.mark.browser
AUDITED = 10


def label_of(asset_id: int) -> Label | None:
    return Label.objects.filter(asset_id=asset_id, is_current=True).prefetch_related("tags").first()


def test_an_operator_audits_with_the_keyboard_and_the_dashboard_shows_the_estimate(
        transactional_db, no_broker, fast_passwords, world, trained, live_server, browser, shots):
    brand = world.brand
    sample = unlabeled_scored_by_hash(brand)
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # two tabs, one session
    page = context.new_page()
    errors = open_review(page, live_server, brand)
    showing(page)

    # o goes to the next order: most confident, then the random sample, with its note.
    page.keyboard.press("o")
    page.wait_for_selector(".seg[data-order='confident'][aria-pressed='true']")
    page.keyboard.press("o")
    page.wait_for_selector(".seg[data-order='audit'][aria-pressed='true']")
    page.wait_for_selector("#audit-note:not([hidden])")
    page.wait_for_function(f"() => document.getElementById('review').dataset.asset === '{sample[0]}'")
    first, suggested = showing(page)
    shots(page, "audit-01-review")

    # Enter accepts: an audit label, said so in the toast.
    page.keyboard.press("Enter")
    label = wait_for(lambda: label_of(first))
    assert label.audit and label.source == "accepted" and [t.pk for t in label.tags.all()] == [suggested]
    page.wait_for_selector("#toast:has-text('accepted, audit')")

    # One audited image is no estimate yet: the dashboard (another tab) asks for more.
    board = context.new_page()
    board.goto(f"{live_server.url}/c/acme/t/{brand.pk}/dashboard/")
    board.locator("#audit-card").scroll_into_view_if_needed()
    assert "audit 9 more for an estimate" in board.inner_text("#audit-card")
    shots(board, "audit-02-dashboard-needs-more")
    board.close()

    # The operator gives the next ones the brand each photo shows (its folder is in its name),
    # by digit: the suggestion kept or corrected, as it comes.
    keys = {t.name: t.position + 1 for t in brand.tags.all()}
    right = 1
    for expected in sample[1:AUDITED]:
        page.wait_for_function(f"() => document.getElementById('review').dataset.asset === '{expected}'")
        asset, suggested = showing(page)
        true_brand = trained.truth[asset]
        right += suggested == trained.tags[true_brand]
        page.keyboard.press(str(keys[true_brand]))
        wait_for(lambda: label_of(asset) is not None)
    wait_for(lambda: Label.objects.filter(taxonomy=brand, audit=True).count() == AUDITED)
    assert 0 < right < AUDITED, "precondition: suggestions kept and corrected"

    page.goto(f"{live_server.url}/c/acme/t/{brand.pk}/dashboard/")
    card = page.locator("#audit-card")
    lo, hi = (round(100 * x) for x in wilson_ci(right, AUDITED))
    assert (f"Live model on a random sample of unlabeled images: {round(100 * right / AUDITED)}% [{lo}, {hi}] right, "
            f"{AUDITED} audited") in card.inner_text()
    assert "hardest picks" in card.inner_text()
    card.scroll_into_view_if_needed()
    shots(page, "audit-03-dashboard")

    # "audit more" leads back to the review page in the audit order.
    card.locator("a:has-text('audit more')").click()
    page.wait_for_selector(".seg[data-order='audit'][aria-pressed='true']")
    page.wait_for_function(f"() => document.getElementById('review').dataset.asset === '{sample[AUDITED]}'")
    assert page.url.endswith("/review/")  # ?order= is taken and dropped from the address
    context.close()
    assert errors == [], errors


def test_the_audit_order_without_a_model_says_to_train_one_first(colours, live_server, browser, shots):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = open_review(page, live_server, colours.colour)
    showing(page)  # the uncertain order serves images in content-hash order without a model
    page.click(".seg[data-order='audit']")
    page.wait_for_selector("#done:not([hidden])")
    assert page.inner_text("#done-title") == "Nothing to audit yet"
    assert "train a model first" in page.inner_text("#done-text")
    shots(page, "audit-04-no-model")
    page.close()
    assert errors == [], errors
