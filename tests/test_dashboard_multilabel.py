"""The dashboard of a multi-label taxonomy: real shoe photos tagged with their brand and, for
the two American brands, "american"; two models trained and evaluated on held-out labels. The
service returns per-tag P/R/F1 beside the tuned thresholds, each version's micro-F1 (the score
promotion compares) and subset accuracy, and the held-out images whose predicted tag set
differs from their label; the page draws them. A score with no evidence behind it is shown as
'-' for either kind of taxonomy (last test, single-label)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import BRANDS, copy_shoes

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
AMERICAN = ("converse", "nike")
PER_BRAND, FIRST = 20, 8  # photos per brand; of them labeled before the first model


@pytest.fixture
def looks(transactional_db, world, shoe_paths, tmp_path, monkeypatch) -> SimpleNamespace:
    """acme's multi-label "look" taxonomy: 60 labeled shoes, model v1 trained on the first 8 of
    each brand and v2 on all. One held-out Nike is labeled without "american" (a tag its
    operator forgot): the model, taught "american" on every other Nike, says yes to it."""
    from labeling.models import Label, Tag, Taxonomy
    from labeling.services import importing, labels, training
    from ml import promotion

    monkeypatch.setattr(labels, "request_retrain_check", lambda tid: False)
    # 60 photos hold 9 held-out labels (by hash), the first 24 only 2: evaluate on them anyway
    monkeypatch.setattr(promotion, "MIN_HOLDOUT", 1)
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=PER_BRAND)
    importing.import_paths(world.acme, tmp_path / "lib")
    look = Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)
    tags = {name: Tag.objects.create(taxonomy=look, name=name, position=i).pk
            for i, name in enumerate((*BRANDS, "american"))}
    assets = sorted(world.acme.assets.all(), key=lambda a: a.original_name)
    forgot = next(a for a in assets if truth[a.original_name] == "nike" and promotion.is_holdout(a.sha256))

    def label(batch: list) -> None:
        for a in batch:
            brand = truth[a.original_name]
            names = [brand] + (["american"] if brand in AMERICAN and a != forgot else [])
            labels.save_label(look, a, [tags[n] for n in names], source=Label.Source.IMPORTED)

    early = {f"{b}/{p.name}" for b in BRANDS for p in shoe_paths["train"][b][:FIRST]}
    label([a for a in assets if a.original_name in early])
    runs = [training.train_now(look)]
    label([a for a in assets if a.original_name not in early])
    runs.append(training.train_now(look))
    assert runs[0].state == "promoted" and runs[1].state in ("promoted", "rejected"), [r.error for r in runs]
    look.refresh_from_db()
    return SimpleNamespace(taxonomy=look, tags=tags, truth=truth, forgot=forgot, runs=runs)


def _held_out_labels(taxonomy) -> dict[int, set[int]]:
    """{asset id: its label's tag ids} of the held-out labeled assets."""
    from labeling.models import Label
    from ml.promotion import is_holdout

    current = Label.objects.filter(taxonomy=taxonomy, is_current=True).select_related("asset").prefetch_related("tags")
    return {lb.asset_id: {t.pk for t in lb.tags.all()} for lb in current if is_holdout(lb.asset.sha256)}


def test_per_tag_scores_come_with_the_thresholds_of_the_live_model(looks):
    from labeling.services import dashboard, suggesting

    live = looks.taxonomy.live_model
    m = live.metrics
    report = dashboard.live_report(looks.taxonomy)
    rows = report["per_class"]
    assert [r["tag"] for r in rows] == [*BRANDS, "american"]
    head = suggesting.load_head(live)  # thresholds as the model file has them, by output
    for r, tag_id, threshold in zip(rows, live.tag_ids, head.thresholds):
        assert r["threshold"] == pytest.approx(float(threshold)) and tag_id == looks.tags[r["tag"]]
        stored = m["per_tag"][r["tag"]]
        assert {k: r[k] for k in ("support", "predicted")} == {k: stored[k] for k in ("support", "predicted")}
        # a score with no evidence behind it (no held-out image has the tag, or the model never
        # said it) is None, shown as '-', not a 0.00 that reads as a failing model
        assert r["recall"] == (None if stored["support"] == 0 else stored["recall"])
        assert r["precision"] == (None if stored["predicted"] == 0 else stored["precision"])
        assert r["f1"] == (None if stored["support"] + stored["predicted"] == 0 else stored["f1"])
    # support counted by hand: held-out labels with that tag (the forgotten "american" not among them)
    held = _held_out_labels(looks.taxonomy)
    assert {r["tag"]: r["support"] for r in rows} == {
        name: sum(pk in tags for tags in held.values()) for name, pk in looks.tags.items()}
    assert report["summary"]["micro_f1"] == m["micro_f1"] == m["score"] > 0.5
    assert report["summary"]["macro_f1"] == m["macro_f1"] and report["confusion"] == []


def test_each_version_has_micro_f1_and_subset_accuracy_with_its_interval(looks):
    from labeling.services import dashboard

    versions = dashboard.versions(looks.taxonomy)
    assert [v["version"] for v in versions] == [1, 2] and [v["n_holdout"] for v in versions] == [2, 9]
    for v, run in zip(versions, looks.runs):
        assert v["micro_f1"] == run.metrics["micro_f1"] and v["macro_f1"] == run.metrics["macro_f1"]
        lo, hi = v["subset_accuracy_ci95"]
        assert 0 <= lo <= v["subset_accuracy"] == run.metrics["subset_accuracy"] <= hi <= 1
        assert v["accuracy"] is None and v["top3_accuracy"] is None  # single-label scores: none
    # the second version's subset accuracy is a share of its 9 held-out images
    assert round(versions[1]["subset_accuracy"] * 9, 6).is_integer()


def test_the_gallery_shows_held_out_images_whose_tag_set_the_model_gets_wrong(looks):
    from labeling.models import Suggestion
    from labeling.services import dashboard, suggesting

    live = looks.taxonomy.live_model
    thresholds = suggesting.load_head(live).thresholds
    names = {pk: name for name, pk in looks.tags.items()}
    # by hand: the tags each held-out suggestion has over its threshold, against the label's
    expected = {}
    for asset_id, label in _held_out_labels(looks.taxonomy).items():
        s = Suggestion.objects.get(model_version=live, asset_id=asset_id)
        predicted = {t for t, p, th in zip(live.tag_ids, s.probs, thresholds) if p >= th}
        if predicted != label:
            expected[asset_id] = (sorted(names[t] for t in label), sorted(names[t] for t in predicted))
    shown = {g["asset"]: g for g in dashboard.gallery(looks.taxonomy)}
    assert looks.forgot.pk in expected and set(shown) == set(expected)
    for asset_id, (label, predicted) in expected.items():
        g = shown[asset_id]
        assert (g["label_tags"], g["predicted_tags"]) == (label, predicted)
        assert g["label"] == ", ".join(label) and g["predicted"] == (", ".join(predicted) or "no tag")
        assert (g["missed"], g["extra"]) == (sorted(set(label) - set(predicted)), sorted(set(predicted) - set(label)))
    assert shown[looks.forgot.pk]["label_tags"] == ["nike"] and "american" in shown[looks.forgot.pk]["predicted_tags"]


def test_a_multilabel_dashboard_without_a_model_says_so(client, world):
    from labeling.models import Tag, Taxonomy

    look = Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)
    Tag.objects.create(taxonomy=look, name="red")
    client.force_login(world.vic)
    page = client.get(f"/c/acme/t/{look.pk}/dashboard/").content.decode()
    assert "No live model yet." in page and "None found: no live model yet" in page
    assert 'id="plot-confusion"' not in page  # no confusion matrix for several tags an image


def test_a_model_trained_on_every_label_shows_its_thresholds_without_held_out_scores(client, world):
    from labeling.models import ModelVersion, Tag, Taxonomy
    from labeling.services import dashboard

    look = Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)
    red, blue = (Tag.objects.create(taxonomy=look, name=n, position=i) for i, n in enumerate(("red", "blue")))
    # what services.evaluation stores when too few labels were held out to evaluate on
    look.live_model = ModelVersion.objects.create(
        taxonomy=look, version=1, backbone="test", artifact="none", tag_ids=[blue.pk, red.pk],
        metrics={"n_train": 12, "n_holdout": 0, "thresholds": [0.3, 0.72], "decision": "first model"})
    look.save(update_fields=["live_model"])
    none = {"precision": None, "recall": None, "f1": None, "support": None}
    assert dashboard.live_report(look)["per_class"] == [{"tag": "blue", **none, "threshold": 0.3},
                                                       {"tag": "red", **none, "threshold": 0.72}]
    [v] = dashboard.versions(look)
    assert v["micro_f1"] is None and v["subset_accuracy_ci95"] is None and dashboard.gallery(look) == []
    client.force_login(world.vic)
    page = client.get(f"/c/acme/t/{look.pk}/dashboard/").content.decode()
    assert '<td data-label="Threshold">0.72</td>' in page and '<td data-label="Precision">—</td>' in page
    assert "Shown once a model is evaluated on enough held-out labels" in page


@pytest.mark.browser
def test_the_multilabel_dashboard_draws_per_tag_thresholds_and_the_versions_scores(
        live_server, browser, shots, world, looks):
    from labeling.services import dashboard

    context = browser.new_context(viewport={"width": 1280, "height": 3500})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server.url + "/login/")
    page.fill("input[name=username]", "vic")
    page.fill("input[name=password]", "vic-pass-123")
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/c/acme/t/{looks.taxonomy.pk}/dashboard/")
    plots = ("plot-versions", "plot-prf", "plot-learning")
    for plot in plots:
        page.wait_for_selector(f"#{plot} .main-svg", timeout=15_000)
    path = shots(page, "dashboard-multilabel")
    for plot in plots:
        assert "no data yet" not in page.locator(f"#{plot}").text_content()
    # precision and recall of 4 tags, and a threshold mark on each
    assert page.locator("#plot-prf .barlayer .point").count() == 8
    assert page.locator("#plot-prf .scatterlayer .point").count() == 4
    assert "threshold" in page.locator("#plot-prf .legend").text_content()
    # micro-F1, macro-F1 and subset accuracy of both versions; no empty accuracy / top-3 series
    assert page.locator("#plot-versions .scatterlayer .trace").count() == 3
    assert page.locator("#plot-versions .scatterlayer .point").count() == 6
    legend = page.locator("#plot-versions .legend").text_content()
    assert "micro-F1" in legend and "subset accuracy" in legend and "top-3" not in legend
    assert page.locator("#plot-learning .scatterlayer .point").count() == 2
    # the per-tag table: the thresholds as the live model has them
    rows = page.locator("#per-tag-table tbody tr")
    live = dashboard.live_report(looks.taxonomy)["per_class"]
    assert rows.count() == len(live) == 4
    for i, r in enumerate(live):
        assert rows.nth(i).locator("td").last.inner_text() == f"{r['threshold']:.2f}"
    assert page.locator("#plot-confusion").count() == 0
    # the gallery: the forgotten tag shows as the model's extra one
    items = page.locator(".gallery li")
    assert items.count() == len(dashboard.gallery(looks.taxonomy)) > 0
    forgot = items.filter(has=page.locator(f"img[alt='{looks.forgot.original_name}']"))
    assert "label: nike" in forgot.inner_text() and "american" in forgot.locator(".chip-bad").inner_text()
    assert "extra " in forgot.locator(".muted").inner_text() and "american" in forgot.locator(".muted").inner_text()
    assert path.stat().st_size > 20_000
    assert not errors, errors
    context.close()


def test_a_tag_with_no_held_out_image_or_never_predicted_shows_a_dash_not_a_zero(client, world):
    from labeling.models import ModelVersion, Tag
    from labeling.services import dashboard
    from ml.metrics import classification_metrics

    brand = world.brand
    tags = list(Tag.objects.filter(taxonomy=brand).order_by("position", "name"))[:3]
    names = [t.path for t in tags]
    # held out: two of the first tag (one taken for the third), one of the second; none of the third
    metrics = classification_metrics(np.array([0, 0, 1]), np.array([[.9, .05, .05], [.2, .1, .7], [.1, .8, .1]]), names)
    brand.live_model = ModelVersion.objects.create(taxonomy=brand, version=1, backbone="test", artifact="none",
                                                   tag_ids=[t.pk for t in tags], metrics={**metrics, "n_holdout": 3})
    brand.save(update_fields=["live_model"])
    rows = {r["tag"]: r for r in dashboard.live_report(brand)["per_class"]}
    assert rows[names[0]]["recall"] == 0.5 and rows[names[0]]["precision"] == 1.0
    # the third was said once and wrongly: precision 0 is a real zero; recall has no evidence
    third = rows[names[2]]
    assert third["precision"] == 0.0 and third["recall"] is None and third["f1"] == 0.0
    # metrics stored before "predicted" existed: the confusion matrix's columns say it
    for vals in metrics["per_class"].values():
        del vals["predicted"]
    metrics["per_class"][names[1]] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    metrics["confusion"] = [[2, 0, 0], [0, 0, 0], [0, 0, 1]]  # the second never true, never said
    brand.live_model.metrics = {**metrics, "n_holdout": 3}
    brand.live_model.save(update_fields=["metrics"])
    second = {r["tag"]: r for r in dashboard.live_report(brand)["per_class"]}[names[1]]
    assert second["precision"] is None and second["recall"] is None and second["f1"] is None
