"""The audit in a real browser: the operator switches the review page to the random sample with
the keyboard, answers blind (the suggestion is hidden) with it, skips one, and the dashboard's
card shows the estimate with the range the unanswered images leave.

Real shoe photos, the real import and a first model from the real training service (conftest's
``trained``); Debian's Chromium through Playwright. Screenshots go to $TAGLOOP_SCREENSHOTS.
"""
from __future__ import annotations

import os

import pytest

from labeling.models import AuditDraw, Label
from labeling.services import audit, labels
from tests._helpers import wait_for
from tests.test_audit import look, unlabeled_scored_by_hash  # noqa: F401 (look: a fixture)
from tests.test_review_browser import colours, open_review, showing  # noqa: F401 (colours: a fixture)

# Playwright's sync API runs an event loop in this thread (see test_review_browser).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = pytest.mark.browser
AUDITED = 10
BUFFER = 5  # items the review page holds (review.js)


def label_of(asset_id: int) -> Label | None:
    return Label.objects.filter(asset_id=asset_id, is_current=True).prefetch_related("tags").first()


def pct(x: float) -> int:
    return round(100 * x)


def showing_audit_item(page, asset_id: int) -> None:
    page.wait_for_function(f"() => document.getElementById('review').dataset.asset === '{asset_id}'")
    showing(page)


def test_an_operator_audits_blind_with_the_keyboard_and_the_dashboard_shows_the_estimate(
        transactional_db, no_broker, fast_passwords, world, trained, live_server, browser, shots):
    brand = world.brand
    sample = unlabeled_scored_by_hash(brand)
    # what the model would have suggested, which the page must not show
    hidden = {a: sorted(labels.suggested_tag_ids(brand, s)) for a, s in labels.live_suggestions(brand, sample).items()}
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # two tabs, one session
    page = context.new_page()
    errors = open_review(page, live_server, brand)
    assert showing(page)[1] is not None and page.is_visible("#accept-btn") and page.is_hidden("#blind-note")

    # o goes to the next order: most confident, then the random sample, with its note. Pressed
    # in quick succession, so the two fetches overlap (the lease must stay an audit one).
    page.keyboard.press("o")
    page.keyboard.press("o")
    page.wait_for_selector(".seg[data-order='audit'][aria-pressed='true']")
    page.wait_for_selector("#audit-note:not([hidden])")
    assert "a skipped audit image counts as unanswered" in page.inner_text("#audit-note")
    showing_audit_item(page, sample[0])
    # Blind: no tag marked suggested, no probabilities, no uncertainty, nothing to accept.
    assert showing(page)[1] is None and page.is_hidden("#accept-btn") and page.is_hidden("#uncertainty")
    assert "Blind: the model's suggestion is hidden for the audit" in page.inner_text("#blind-note")
    assert page.inner_text("#panel-title") == "Your answer"
    assert set(page.locator(".tag .pct").all_inner_texts()) == {""}
    names = [t.name for t in brand.tags.order_by("position")]
    assert page.locator(".tag .tag-name").all_inner_texts() == names  # taxonomy order, not the model's
    shots(page, "audit-01-blind-review")

    # Enter accepts nothing: the operator picks the brand the photo shows (its folder).
    page.keyboard.press("Enter")
    page.wait_for_selector("#toast:has-text('Blind audit: pick a tag with 1–9')")
    assert label_of(sample[0]) is None
    keys = {t.name: t.position + 1 for t in brand.tags.all()}
    right = 0
    for expected in sample[:AUDITED]:
        showing_audit_item(page, expected)
        true_brand = trained.truth[expected]
        right += hidden[expected] == [trained.tags[true_brand]]
        page.keyboard.press(str(keys[true_brand]))
        label = wait_for(lambda: label_of(expected))
        # the server compared the answer with the suggestion it did not send
        assert label.audit and label.source == ("accepted" if hidden[expected] == [trained.tags[true_brand]] else "corrected")
        if expected == sample[0]:
            page.wait_for_selector("#toast:has-text('(audit answer)')")
            board = context.new_page()  # one answer is no estimate yet: the dashboard asks for more
            board.goto(f"{live_server.url}/c/acme/t/{brand.pk}/dashboard/")
            board.locator("#audit-card").scroll_into_view_if_needed()
            assert "audit 9 more for an estimate" in board.inner_text("#audit-card")
            shots(board, "audit-02-dashboard-needs-more")
            board.close()
    assert 0 < right < AUDITED, "precondition: suggestions right and wrong"

    # An image the operator cannot tell: skipped, it stays drawn and unanswered.
    showing_audit_item(page, sample[AUDITED])
    page.keyboard.press("s")
    page.wait_for_selector("#toast:has-text('unanswered in the audit')")
    showing_audit_item(page, sample[AUDITED + 1])
    # the page holds the one on screen and 4 more, all drawn: wait for the refill to land
    wait_for(lambda: AuditDraw.objects.filter(taxonomy=brand).count() == AUDITED + 1 + BUFFER)

    page.goto(f"{live_server.url}/c/acme/t/{brand.pk}/dashboard/")
    live = audit.estimate(brand)["live"]
    assert (live["audited"], live["right"], live["unanswered"]) == (AUDITED, right, 1 + BUFFER)
    card = page.locator("#audit-card")
    n = live["unanswered"]
    assert (f"Live model on a random sample of unlabeled images: {pct(right / AUDITED)}% [{pct(live['ci95'][0])}, "
            f"{pct(live['ci95'][1])}] right on {AUDITED} audited; {n} drawn image{'s' if n > 1 else ''} unanswered: "
            f"{pct(live['bounds95'][0])}–{pct(live['bounds95'][1])}% whatever") in card.inner_text()
    assert "hardest picks" in card.inner_text()
    card.scroll_into_view_if_needed()
    shots(page, "audit-03-dashboard")

    # "audit more" leads back to the review page in the audit order: the skipped one first.
    card.locator("a:has-text('audit more')").click()
    page.wait_for_selector(".seg[data-order='audit'][aria-pressed='true']")
    showing_audit_item(page, sample[AUDITED])
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


def test_a_multilabel_audit_preselects_nothing_and_saves_the_tags_picked(
        transactional_db, no_broker, fast_passwords, world, look, live_server, browser, shots):
    tax = look.taxonomy
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = open_review(page, live_server, tax)
    page.goto(f"{live_server.url}/c/acme/t/{tax.pk}/review/?order=audit")
    showing_audit_item(page, unlabeled_scored_by_hash(tax)[0])
    asset = int(page.locator("#review").get_attribute("data-asset"))
    assert page.locator(".tag[aria-pressed='true']").count() == 0 and showing(page)[1] is None
    assert page.is_visible("#blind-note") and page.inner_text("#accept-text") == "Save selection"
    page.keyboard.press("Enter")  # nothing picked: nothing saved
    page.wait_for_selector("#toast:has-text('Select tags')")
    keys = {t.pk: t.position + 1 for t in tax.tags.all()}
    truth = look.true_tags(look.truth[asset])
    for tag in truth:
        page.keyboard.press(str(keys[tag]))
    page.wait_for_function(f"() => document.querySelectorAll(\".tag[aria-pressed='true']\").length === {len(truth)}")
    shots(page, "audit-05-multilabel-blind")
    page.keyboard.press("Enter")
    label = wait_for(lambda: label_of(asset))
    assert label.audit and sorted(t.pk for t in label.tags.all()) == truth
    s = labels.live_suggestions(tax, [asset])[asset]
    assert label.source == ("accepted" if sorted(labels.suggested_tag_ids(tax, s)) == truth else "corrected")
    page.close()
    assert errors == [], errors
