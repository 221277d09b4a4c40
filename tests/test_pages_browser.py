"""Every browser page, as each role, in Chromium: no JavaScript error, no console error, no
failed request and no response >= 400 on any of them, and nothing wider than a phone's screen.

The library is ``reviewable`` (12 real shoes, a first model) plus one clustering, so every page
has something to draw; the pages a role may not open are left out here (tests/test_roles_matrix.py
checks that they are refused). Screenshots go to $TAGLOOP_SCREENSHOTS (default: tmp_path).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from tests.conftest import BRANDS

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the ORM between browser steps
pytestmark = pytest.mark.browser

ROLES = {"alice": "admin", "olga": "operator", "vic": "viewer"}
ADMIN_ONLY = {"duplicates", "import", "import job", "members", "Django admin"}
PHONE = {"width": 390, "height": 844}
# Elements whose right edge lies past the viewport and that no scrolling or clipping parent
# contains: what makes a phone page scroll sideways.
SPILLING_ELEMENTS = """() => {
  const width = document.documentElement.clientWidth, out = [];
  for (const el of document.querySelectorAll('body *')) {
    const box = el.getBoundingClientRect();
    if (!box.width || box.right <= width + 1) continue;
    let parent = el.parentElement, contained = false;
    for (; parent && parent !== document.body; parent = parent.parentElement) {
      if (/(auto|scroll|hidden|clip)/.test(getComputedStyle(parent).overflowX)) { contained = true; break; }
    }
    if (!contained) out.push(`${el.tagName.toLowerCase()}.${[...el.classList].join('.')} ends at ${Math.round(box.right)}px`);
  }
  return out.slice(0, 5);
}"""

CRUMBS_UNDER_ACCOUNT = """() => {
  const account = document.querySelector('.topbar .account');
  if (!account) return false;
  const a = account.getBoundingClientRect();
  return [...document.querySelectorAll('.topbar .crumbs > *')].some((el) => {
    const c = el.getBoundingClientRect();
    return c.width && c.right > a.left && c.left < a.right && c.bottom > a.top && c.top < a.bottom;
  });
}"""


@dataclass
class Problems:
    """What the browser reported, by the page it was on."""

    seen: list[str] = field(default_factory=list)
    page: str = "login"

    def add(self, what: str) -> None:
        self.seen.append(f"{self.page}: {what}")


def watch(page, problems: Problems) -> None:
    page.on("pageerror", lambda exc: problems.add(f"JavaScript error: {exc}"))
    page.on("console", lambda msg: msg.type == "error"
            and problems.add(f"console error: {msg.text} ({msg.location.get('url', '?')})"))
    page.on("response", lambda r: r.status >= 400 and problems.add(f"HTTP {r.status} for {r.url}"))
    # Leaving a page cancels its image loads and polls (net::ERR_ABORTED): that is not a fault.
    page.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "")
            and problems.add(f"request failed: {r.url} ({r.failure})"))


def log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pass-123")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/c/acme/")


@pytest.fixture
def library(reviewable, tmp_path):
    """reviewable plus acme's clusters (k=2) and the import job that brought the shoes in."""
    from labeling.models import Asset, ImportJob
    from labeling.services import clusters

    clusters.recluster(reviewable.acme.pk, k=2)
    return {
        "world": reviewable,
        "asset": Asset.objects.filter(client=reviewable.acme).order_by("id").first(),
        "job": ImportJob.objects.filter(client=reviewable.acme).latest("id"),
    }


def pages_of(library) -> dict[str, str]:
    t = f"/c/acme/t/{library['world'].brand.pk}/"
    return {
        "home": "/",  # a one-client user lands on the client page
        "client": "/c/acme/",
        "review": t + "review/",
        "dashboard": t + "dashboard/",
        "clusters": t + "clusters/",
        "cluster": t + "clusters/0/",
        "map": t + "map/",
        "more like this": t + f"assets/{library['asset'].pk}/similar/",
        "search by image": t + "search/",
        "second look": t + "second-look/",
        "duplicates": t + "duplicates/",
        "import": "/c/acme/import/",
        "import job": f"/c/acme/imports/{library['job'].pk}/",
        "members": "/c/acme/members/",
        "password change": "/account/password/",
        "API docs": "/api/v1/docs/",
        "Django admin": "/admin/",
    }


def settle(page) -> None:
    """Wait until the page's scripts have fetched what they draw (plots, the queue, the map)."""
    page.wait_for_load_state("networkidle")


def test_every_page_loads_cleanly_for_every_role(library, live_server, browser, shots, shoe_paths):
    base, problems = live_server.url, Problems()
    for username, role in ROLES.items():
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(30_000)  # two shared CPU cores: be patient
        watch(page, problems)
        problems.page = f"{role} login"
        log_in(page, base, username)
        for name, url in pages_of(library).items():
            if name in ADMIN_ONLY and role != "admin":
                continue
            problems.page = f"{role} {name}"
            response = page.goto(base + url)
            assert response.status == 200, (role, name, response.status)
            settle(page)
            shots(page, f"pages-{role}-{name.replace(' ', '-')}")

        # A search posts a photo and draws its neighbours through the same grid script.
        problems.page = f"{role} search result"
        page.goto(base + pages_of(library)["search by image"])
        page.set_input_files("#search-image", str(shoe_paths["test"][BRANDS[0]][0]))
        page.click("main button[type=submit]")
        page.wait_for_selector("#grid[data-ready]")
        assert page.locator("#grid .x-tile").count() > 0
        assert page.locator("#search-for").inner_text().startswith(f"{page.locator('#grid .x-tile').count()} images most like")
        context.close()
    assert problems.seen == [], "\n".join(problems.seen)


def test_no_page_scrolls_sideways_on_a_phone_and_the_top_bar_does_not_overlap(library, live_server, browser, shots):
    base, problems = live_server.url, Problems()
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.set_default_timeout(30_000)
    watch(page, problems)
    log_in(page, base, "alice")
    spilling = {}
    for name, url in pages_of(library).items():
        problems.page = f"phone {name}"
        page.goto(base + url)
        settle(page)
        if found := page.evaluate(SPILLING_ELEMENTS):
            spilling[name] = found
        if page.evaluate(CRUMBS_UNDER_ACCOUNT):  # the breadcrumb once ran under the user name
            spilling.setdefault(name, []).append("the breadcrumb overlaps the account links")
        if name == "review":  # the photo and Accept on the first screen, no scrolling
            page.wait_for_selector("#current-img:not([hidden])")
            img, accept = page.locator("#current-img").bounding_box(), page.locator("#accept-btn").bounding_box()
            if not (img["y"] >= 0 and accept["y"] + accept["height"] <= PHONE["height"]):
                spilling.setdefault(name, []).append(f"image at {img['y']:.0f}px, Accept ends at "
                                                     f"{accept['y'] + accept['height']:.0f}px of {PHONE['height']}")
        shots(page, f"pages-phone-{name.replace(' ', '-')}")
    context.close()
    assert spilling == {}, spilling
    assert problems.seen == [], "\n".join(problems.seen)


def test_a_button_reached_with_tab_shows_a_focus_ring(library, live_server, browser):
    """Buttons set their own box-shadow, which once hid the focus ring of every button."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    log_in(page, live_server.url, "olga")
    page.goto(f"{live_server.url}{pages_of(library)['dashboard']}")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.matches('button.btn')"):
            break
    else:
        pytest.fail("Tab never reached a button")
    ring = page.evaluate("(() => { const s = getComputedStyle(document.activeElement); "
                         "return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()")
    assert ring[0] != "none" and ring[1] >= 2, ring
    context.close()
