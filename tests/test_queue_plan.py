"""The queue after a retrain: the labels until the next retrain are one active-learning batch,
planned by ml.selection's diverse pick, so second shots of one photo do not fill a page."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from labeling.models import UNPLANNED, Label, Suggestion
from labeling.services import importing, labels, queue, training
from ml.selection import POOL_FACTOR
from tests.conftest import BRANDS, copy_shoes


def _with_second_shots(root: Path) -> dict[str, str]:
    """Every photo under root again as a re-encoded JPEG beside it (what a re-export or a
    second upload of the same shot looks like); returns {copy name: original name}."""
    twins = {}
    for p in sorted(root.rglob("*.jpg")):
        copy = p.with_name(p.stem + "-again.jpg")
        with Image.open(p) as img:
            img.convert("RGB").save(copy, quality=88)
        twins[str(copy.relative_to(root))] = str(p.relative_to(root))
    return twins


def _twin_pairs(names: list[str], twins: dict[str, str]) -> int:
    shown = set(names)
    return sum(1 for copy, original in twins.items() if copy in shown and original in shown)


def test_after_a_retrain_the_first_page_holds_no_two_shots_of_one_photo(world, shoe_paths, tmp_path):
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=14)
    twins = _with_second_shots(tmp_path / "lib")
    job = importing.import_paths(world.acme, tmp_path / "lib")
    assert job.n_failed == 0, job.errors
    assets = {a.original_name: a for a in world.acme.assets.all()}
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    for brand in BRANDS:
        for name in [n for n, b in sorted(truth.items()) if b == brand][:2]:
            labels.save_label(world.brand, assets[name], [tags[brand]], source=Label.Source.IMPORTED)
    k = world.brand.retrain_threshold  # 6: the queue plans one retrain's worth of labels
    run = training.train_now(world.brand)
    assert run.state == "promoted", run.error
    world.brand.refresh_from_db()
    live = world.brand.live_model

    rows = Suggestion.objects.filter(model_version=live, is_labeled=False)
    by_uncertainty = [s.asset.original_name for s in rows.order_by("-uncertainty", "id")[:k]]
    # a photo and its copy get nearly the same suggestion, so plain uncertainty shows both
    assert _twin_pairs(by_uncertainty, twins) >= 1

    page = queue.review_batch(world.brand, "uncertain", limit=k)
    names = [i["name"] for i in page]
    assert len(names) == k and _twin_pairs(names, twins) == 0
    # the plan is the next retrain's worth of labels, least sure first ...
    planned = rows.exclude(queue_rank=UNPLANNED).order_by("queue_rank")
    assert [s.asset_id for s in planned] == [i["asset"] for i in page]
    u = [s.uncertainty for s in planned]
    assert u == sorted(u, reverse=True)
    # ... drawn from the POOL_FACTOR * k least sure distinct photos (at most two rows each),
    # not from anywhere in the library
    cutoff = sorted(rows.values_list("uncertainty", flat=True), reverse=True)[2 * POOL_FACTOR * k - 1]
    assert len(rows) > 2 * POOL_FACTOR * k and min(u) >= cutoff
    # past the plan the queue goes on by uncertainty
    more = queue.review_batch(world.brand, "uncertain", limit=10, exclude=[i["asset"] for i in page])
    rest = [i["uncertainty"] for i in more]
    assert len(rest) == 10 and rest == sorted(rest, reverse=True)
    assert not set(i["asset"] for i in more) & set(planned.values_list("asset_id", flat=True))


def test_labeling_a_planned_asset_takes_it_off_the_page_and_a_new_model_replans(world, trained):
    live = world.brand.live_model
    first = queue.review_batch(world.brand, "uncertain", limit=3)
    asset = trained.assets[first[0]["asset"]]
    labels.save_label(world.brand, asset, [trained.tags[trained.truth[asset.pk]]], source=Label.Source.ACCEPTED)
    again = queue.review_batch(world.brand, "uncertain", limit=3)
    assert asset.pk not in [i["asset"] for i in again]
    assert [i["asset"] for i in again][:2] == [i["asset"] for i in first][1:]
    run = training.train_now(world.brand)
    assert run.state in ("promoted", "rejected"), run.error
    world.brand.refresh_from_db()
    if world.brand.live_model_id != live.pk:
        planned = Suggestion.objects.filter(model_version=world.brand.live_model).exclude(queue_rank=UNPLANNED)
        assert 0 < planned.count() <= world.brand.retrain_threshold
