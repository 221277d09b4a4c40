"""The members page in Chromium: an admin adds a colleague through the form, reads the
one-time password off the page, changes a role with the select; the new colleague logs in."""
from __future__ import annotations

import os

import pytest

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
pytestmark = pytest.mark.browser


def log_in(page, base: str, username: str, password: str) -> None:
    page.goto(base + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_an_admin_adds_a_colleague_who_then_logs_in(live_server, browser, shots, transactional_db,
                                                     fast_passwords, world):
    from labeling.models import Membership, Role

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())
    log_in(page, live_server.url, "alice", "alice-pass-123")
    page.goto(f"{live_server.url}/c/acme/")
    page.click("text=Members")
    page.fill(".member-add input[name=username]", "newbie")
    page.select_option(".member-add select[name=role]", "viewer")
    page.click(".member-add button[type=submit]")
    password = page.locator("#new-password").inner_text().strip()
    shots(page, "members-added")
    assert len(password) >= 12
    assert page.locator("#members tbody tr").count() == 4

    row = page.locator('#members tr[data-username="newbie"]')
    row.locator("select[name=role]").select_option("operator")
    row.locator("button[value=role]").click()
    page.wait_for_selector("text=newbie is now operator")
    assert Membership.objects.get(user__username="newbie").role == Role.OPERATOR
    shots(page, "members-role-changed")

    # a 150-character username wraps: every row's Role and Remove stay inside the card
    page.fill(".member-add input[name=username]", "x" * 150)
    page.click(".member-add button[type=submit]")
    page.wait_for_selector("#new-password")
    card = page.locator(".table-card").bounding_box()
    for button in page.locator("#members button").all():
        box = button.bounding_box()
        assert box["x"] + box["width"] <= card["x"] + card["width"] + 1, box

    other = browser.new_context().new_page()
    log_in(other, live_server.url, "newbie", password)
    other.goto(f"{live_server.url}/c/acme/")
    assert other.locator("h1").inner_text() == "Acme"
    assert other.locator("text=Members").count() == 0  # operators do not manage members
    assert not errors, errors
    context.close()
