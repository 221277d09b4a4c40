"""The dashboard in Chromium: real shoes, a real first model, labels by two operators; every
plot is drawn by plotly.js (served from the installed package) and the gallery shows images."""
from __future__ import annotations

import os

import pytest

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
pytestmark = pytest.mark.browser
PLOTS = ["plot-time", "plot-operators", "plot-coverage", "plot-agreement", "plot-versions", "plot-confusion",
         "plot-prf", "plot-learning", "plot-savings"]


@pytest.fixture
def dashboard_data(transactional_db, settings, world, trained, monkeypatch):
    from labeling.services import labels, queue, training
    from ml import promotion

    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: False)
    # 24 images hold only a few held-out labels (by hash); evaluate the second model on them anyway.
    monkeypatch.setattr(promotion, "MIN_HOLDOUT", 1)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for i, item in enumerate(queue.review_batch(world.brand, limit=50)):
        user = world.olga if i % 2 else world.alice
        tags = item["suggested"] if i % 3 else [trained.tags[trained.truth[item["asset"]]]]
        labels.save_label(world.brand, trained.assets[item["asset"]], tags, user=user)
    run = training.train_now(world.brand)
    assert run.state in ("promoted", "rejected"), run.error
    return trained


def _open_dashboard(page, base_url: str, world, username: str = "vic") -> None:
    page.goto(base_url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"{username}-pass-123")
    page.click("button[type=submit]")
    page.goto(f"{base_url}/c/acme/t/{world.brand.pk}/dashboard/")


def test_the_dashboard_draws_every_plot(live_server, browser, shots, world, dashboard_data):
    context = browser.new_context(viewport={"width": 1280, "height": 2700})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open_dashboard(page, live_server.url, world)
    for plot in PLOTS:
        page.wait_for_selector(f"#{plot} .main-svg", timeout=15_000)
    path = shots(page, "dashboard")
    assert page.locator("#plot-confusion .hm").count() == 1  # the heat map has cells
    assert page.locator("#plot-versions .errorbar").count() > 0  # confidence intervals drawn
    assert page.locator("#plot-prf .point").count() == 6  # precision and recall of 3 tags
    assert page.locator(".main-svg").count() >= len(PLOTS)
    # newest first, one row per version, and what decided it
    from labeling.models import TrainingRun

    rows = page.locator("#versions-table tbody tr")
    assert rows.count() == world.brand.versions.count() == 2
    assert rows.nth(0).inner_text().startswith("v2") and "first model" in rows.nth(1).inner_text()
    second = TrainingRun.objects.get(model_version__version=2, taxonomy=world.brand)
    went_live = rows.nth(0).locator("td[data-label='Went live']").inner_text()
    assert second.state in ("promoted", "rejected")
    assert went_live == ("yes" if second.state == "promoted" else "no")
    assert second.message in rows.nth(0).inner_text()
    world.brand.refresh_from_db()
    savings = world.brand.live_model.metrics.get("savings")
    text = page.locator("#savings-text").inner_text()
    if savings:  # labelling order vs random orders: two curves, the random range and the 95 % line
        assert page.locator("#plot-savings .scatterlayer .trace").count() == 4
        assert text.startswith(("Your order reached", "Not enough labels yet"))
    else:  # the live model had too few held-out labels to be evaluated
        assert text.startswith("Shown once a model is evaluated")
    assert path.stat().st_size > 20_000
    assert not errors, errors
    context.close()


@pytest.fixture
def matching_on(world, trained):
    """The second model of dashboard_data is trained with local matching (the first without)."""
    world.brand.local_matching = True
    world.brand.save(update_fields=["local_matching"])


def test_the_version_plot_shows_the_accuracy_without_matching(live_server, browser, shots, world, matching_on,
                                                              dashboard_data):
    world.brand.refresh_from_db()
    second = world.brand.versions.get(version=2)
    assert "score_without" in second.metrics["local"]
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    _open_dashboard(page, live_server.url, world)
    page.wait_for_selector("#plot-versions .main-svg", timeout=15_000)
    shots(page, "dashboard-matching")
    # accuracy, macro-F1 and the head alone; no top-3 line with 3 tags (always 100 %)
    assert page.locator("#plot-versions .scatterlayer .trace").count() == 3
    legend = page.locator("#plot-versions .legend").text_content()
    assert "accuracy without matching" in legend and "top-3" not in legend
    context.close()


def test_retrain_now_stays_disabled_while_a_run_is_queued_or_running(live_server, browser, world, trained, settings):
    from labeling.models import TrainingRun

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    run = TrainingRun.objects.create(taxonomy=world.brand, trigger="manual")  # queued: a second press would queue a copy
    page = browser.new_page()
    _open_dashboard(page, live_server.url, world, "alice")
    assert page.locator("#retrain").is_disabled()
    TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.PROMOTED)  # done: the next poll frees it
    page.wait_for_function("() => !document.getElementById('retrain').disabled", timeout=15_000)
    page.close()


def test_retrain_now_says_why_a_run_could_not_start_and_stays_usable(live_server, browser, world, settings):
    from labeling.models import TrainingRun

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    page = browser.new_page()
    _open_dashboard(page, live_server.url, world, "alice")  # no labels yet
    page.click("#retrain")
    page.wait_for_function("() => document.getElementById('run-text').textContent.includes('not started')")
    assert "no labels to learn from" in page.inner_text("#run-text")
    assert not page.locator("#retrain").is_disabled() and not TrainingRun.objects.exists()
    page.close()


def test_an_admin_makes_the_other_version_live_from_the_versions_table(live_server, browser, shots, world,
                                                                         dashboard_data, monkeypatch):
    from labeling import tasks
    from labeling.services import training

    # No worker here: the queued run executes on commit of the request, as the worker would.
    monkeypatch.setattr(training, "enqueue", training.execute_run)
    monkeypatch.setattr(tasks, "enqueue_recluster", lambda client_id: False)
    world.brand.refresh_from_db()
    target = world.brand.versions.exclude(pk=world.brand.live_model_id).get()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open_dashboard(page, live_server.url, world, "alice")
    rows = page.locator("#versions-table tbody tr")
    live_row = rows.filter(has=page.locator(".pill"))
    assert live_row.locator(".make-live").count() == 0  # the live one has no button
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.locator("#versions-table").scroll_into_view_if_needed()
    shots(page, "dashboard-make-live")
    page.click(f".make-live[data-version='{target.version}']")
    # the run finishes, the page reloads: the row says who made it live, with the live pill
    page.wait_for_selector(f"#versions-table tr:has-text('v{target.version} made live by alice') .pill", timeout=20_000)
    assert asked and asked[0].startswith(f"Make v{target.version} live?")
    world.brand.refresh_from_db()
    assert world.brand.live_model_id == target.pk
    assert "made live by alice" in page.inner_text("#run-text")
    assert not errors, errors
    page.close()
