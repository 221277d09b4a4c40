"""Cluster page and map in a real browser: select a cluster, deselect one, apply a tag by
key, check the stored labels and that the deselected image is still in the review queue,
undo; keyboard ranges; a box selection on the map feeds the same bulk action.
Screenshots go to $TAGLOOP_SCREENSHOTS (default: the test's tmp_path)."""
from __future__ import annotations

import os

import pytest

from ._helpers import wait_for

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the ORM between browser steps
pytestmark = pytest.mark.browser
ALL_IMAGES_LOADED = "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"


def _labels(asset_ids):
    from labeling.models import Label

    return dict(Label.objects.filter(asset_id__in=asset_ids, is_current=True).values_list("asset_id", "tags"))


def _login(page, base, user):
    page.goto(f"{base}/login/")
    page.fill("#id_username", user)
    page.fill("#id_password", f"{user}-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/c/acme/")


def _olgas_page(browser, base: str, height: int):
    """A page logged in as the operator olga, and the list its script errors land in."""
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, base, "olga")
    return page, errors


def test_bulk_tagging_a_cluster_in_the_browser_keeps_the_deselected_image_in_the_queue(
    reviewable, live_server, browser, shots
):
    from labeling.models import BulkAction, Cluster, Label
    from labeling.services import clusters, queue

    world = reviewable
    clustering = clusters.recluster(world.acme.pk, k=2)
    cluster = Cluster.objects.filter(clustering=clustering).order_by("-size").first()
    members = clusters.members(cluster)
    before = _labels(members)
    page, errors = _olgas_page(browser, live_server.url, height=860)

    page.goto(f"{live_server.url}/c/acme/t/{world.brand.pk}/clusters/")
    page.wait_for_function(ALL_IMAGES_LOADED)
    shots(page, "10-clusters")
    page.click(f"a[href='/c/acme/t/{world.brand.pk}/clusters/{cluster.index}/?v={cluster.clustering_id}']")
    page.wait_for_selector("#grid[data-ready]")
    page.wait_for_function(ALL_IMAGES_LOADED)

    page.keyboard.press("a")  # all
    assert page.inner_text("#sel-count") == str(len(members))
    open_tiles = page.locator(".x-tile:not(.is-labeled)")
    left_out = int(open_tiles.nth(1).get_attribute("data-asset"))
    open_tiles.nth(1).click()  # deselect one
    assert page.inner_text("#sel-count") == str(len(members) - 1)
    shots(page, "11-cluster-selected")

    nike = next(t for t in world.brand.tags.all() if t.name == "nike")
    key = page.locator(f"#bulk-tags [data-tag='{nike.pk}'] kbd").inner_text()
    page.keyboard.press(key)
    page.keyboard.press(key)  # pressed twice: one action, so one "u" undoes it all
    applied = [a for a in members if a != left_out]
    wait_for(lambda: all(_labels(applied).get(a) == nike.pk for a in applied))
    page.wait_for_selector("#toast:has-text('Labeled')")
    assert BulkAction.objects.filter(taxonomy=world.brand).count() == 1
    assert Label.objects.filter(asset_id__in=applied, is_current=True, batch__isnull=False).count() == len(applied)
    assert left_out not in _labels([left_out])
    assert left_out in [i["asset"] for i in queue.review_batch(world.brand, limit=50)]
    page.wait_for_selector("#toast:has-text('Labeled')")
    shots(page, "12-cluster-applied")

    page.keyboard.press("u")  # undo the whole action
    wait_for(lambda: _labels(members) == before)
    page.wait_for_selector("#toast:has-text('Undone')")

    page.keyboard.press("Escape")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    assert page.inner_text("#sel-count") == "3"  # a keyboard range

    # Enter on a focused link follows it: it must not accept the selection's suggestions.
    page.focus("a:has-text('All clusters')")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/c/acme/t/{world.brand.pk}/clusters/")
    assert _labels(members) == before
    page.close()
    assert errors == [], errors


def test_the_map_draws_every_image_and_a_box_selection_feeds_the_bulk_action(
    reviewable, live_server, browser, shots
):
    from labeling.models import Asset
    from labeling.services import clusters

    world = reviewable
    clusters.recluster(world.acme.pk)
    ids = list(Asset.objects.filter(client=world.acme).values_list("id", flat=True))
    page, errors = _olgas_page(browser, live_server.url, height=860)
    page.goto(f"{live_server.url}/c/acme/t/{world.brand.pk}/map/")
    page.wait_for_function(f"() => document.querySelectorAll('#map .scatterlayer .point').length === {len(ids)}")
    dot = page.locator("#map .scatterlayer .point").first.bounding_box()  # plotly's drag layer is on top
    page.mouse.move(dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
    page.wait_for_selector("#map-hover:not([hidden])")
    shots(page, "20-map-label")
    page.click("#color-by [data-color=uncertainty]")
    page.wait_for_selector("#map .colorbar")
    shots(page, "21-map-uncertainty")

    page.click("#map .modebar-btn[data-val='select']")  # box select
    box = page.locator("#map .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=5)
    page.mouse.up()
    page.wait_for_function(f"() => document.getElementById('sel-count').textContent === '{len(ids)}'")
    page.keyboard.press("Enter")  # accept each suggestion
    unlabeled_before = [a for a in ids if a not in _labels(ids)]
    wait_for(lambda: len(_labels(ids)) == len(ids))
    assert unlabeled_before
    page.close()
    assert errors == [], errors


def test_second_look_keys_decide_each_row_once_and_fix_applies_the_tag_the_row_names(
    reviewable, live_server, browser, shots
):
    from labeling.models import Asset, LabelEvent
    from labeling.services import labels

    world = reviewable
    tags = {t.pk: t for t in world.brand.tags.all()}
    for asset in Asset.objects.filter(client=world.acme):  # label the rest by the file's brand
        brand = asset.original_name.rsplit("/", 1)[-1].split("-", 1)[0]
        if asset.pk not in _labels([asset.pk]):
            labels.save_label(world.brand, asset, [next(t for t in tags.values() if t.name == brand).pk], notify=False)
    page, errors = _olgas_page(browser, live_server.url, height=900)
    page.goto(f"{live_server.url}/c/acme/t/{world.brand.pk}/second-look/")
    rows = page.locator("#second .x-row")
    assert rows.count() >= 3
    first, second, third = (int(rows.nth(i).get_attribute("data-asset")) for i in range(3))
    fix = int(rows.nth(2).get_attribute("data-fix"))
    assert fix != _labels([third])[third] and tags[fix].name in rows.nth(2).inner_text()
    shots(page, "30-second-look")

    page.keyboard.press("k")
    page.keyboard.press("k")  # the next row, not the first one twice
    wait_for(lambda: rows.nth(1).evaluate("r => r.classList.contains('is-done')"))
    page.keyboard.press("f")
    wait_for(lambda: _labels([third])[third] == fix)
    page.wait_for_function("() => !document.querySelectorAll('#second .x-row')[2].querySelector('.x-row-fix')")
    events = LabelEvent.objects.filter(asset_id__in=[first, second], user=world.olga, action="set")
    assert sorted(e.asset_id for e in events if e.before == e.after) == sorted([first, second])  # one keep each
    assert page.locator("#second .x-row.is-done").count() == 3
    shots(page, "31-second-look-decided")
    page.close()
    assert errors == [], errors
