"""What a retrain learns from and is judged on (services.training_data), on real shoe photos:
a tag whose labels all fall in the held-out bucket still trains, and suggestions accepted in
bulk train but are never held-out "truth"."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from labeling.models import BulkAction, Label, Suggestion, TrainingRun
from labeling.services import bulk, dashboard, importing, labels, training, training_data
from ml import promotion
from tests.conftest import copy_shoes

PER_BRAND = 30  # 11 adidas and nike photos fall in the held-out bucket: enough to compare


@pytest.fixture
def shoes(world, shoe_paths, tmp_path) -> SimpleNamespace:
    """90 real photos imported, none labeled; by brand in file order."""
    truth = copy_shoes(shoe_paths, tmp_path / "lib", per_brand=PER_BRAND)
    importing.import_paths(world.acme, tmp_path / "lib")
    tags = {t.name: t.pk for t in world.brand.tags.all()}
    by_brand: dict[str, list] = {}
    for a in sorted(world.acme.assets.all(), key=lambda a: a.original_name):
        by_brand.setdefault(truth[a.original_name], []).append(a)
    return SimpleNamespace(tags=tags, by_brand=by_brand)


def _label(world, shoes, brand: str, assets) -> None:
    for a in assets:
        labels.save_label(world.brand, a, [shoes.tags[brand]], world.olga)


def test_a_tag_whose_only_labels_fall_in_the_held_out_bucket_trains_on_them_and_the_run_says_so(world, shoes):
    for brand in ("adidas", "nike"):
        _label(world, shoes, brand, shoes.by_brand[brand])
    converse = shoes.by_brand["converse"]
    held_converse = [a for a in converse if promotion.is_holdout(a.sha256)]
    _label(world, shoes, "converse", held_converse)  # every converse label is in the bucket
    held_others = sum(promotion.is_holdout(a.sha256) for b in ("adidas", "nike") for a in shoes.by_brand[b])
    assert len(held_converse) >= 3 and promotion.can_compare(held_others), "precondition"

    assert training.not_ready(world.brand) is None  # the check agrees with the run below
    run = training.train_now(world.brand)
    assert run.state == TrainingRun.State.PROMOTED, run.error
    m = run.metrics
    # the converse labels trained; the other held-out labels are still held out
    assert m["n_holdout"] == held_others and m["n_train"] == 2 * PER_BRAND - held_others + len(held_converse)
    assert sorted(m["holdout_moved"]) == sorted(a.pk for a in held_converse)
    assert f"{len(held_converse)} held-out labels trained instead, as no other label taught converse" in m["decision"]
    row = dashboard.versions(world.brand)[-1]
    assert row["decision"] == m["decision"] == run.message  # the dashboard's "Why" column
    assert "converse" not in m["per_class"] or m["per_class"]["converse"]["support"] == 0

    # Learned, not a fixed 0: the converse photos nobody labeled are mostly suggested as converse.
    mv = run.model_version
    col = mv.tag_ids.index(shoes.tags["converse"])
    rest = {a.pk for a in converse} - {a.pk for a in held_converse}
    probs = [s.probs[col] for s in Suggestion.objects.filter(model_version=mv, asset_id__in=rest)]
    assert len(probs) == len(rest) and np.mean(np.array(probs) > 1 / 3) > 0.5
    # and the gallery of held-out misses never shows an image the model trained on
    assert not {g["asset"] for g in dashboard.gallery(world.brand)} & {a.pk for a in held_converse}


def test_a_tag_with_a_training_label_keeps_its_held_out_labels_held_out(world, shoes):
    for brand in ("adidas", "nike", "converse"):
        _label(world, shoes, brand, shoes.by_brand[brand])
    data = training_data.collect(world.brand)
    bucket = np.array([promotion.is_holdout(a.sha256) for a in _assets(data)])
    assert (data.holdout == bucket).all() and not data.moved.any() and data.compared


def test_suggestions_accepted_in_bulk_train_but_are_never_held_out(world, shoes):
    for brand in ("adidas", "nike"):
        _label(world, shoes, brand, shoes.by_brand[brand])
    converse = shoes.by_brand["converse"]
    _label(world, shoes, "converse", converse[:20])
    first = training.train_now(world.brand)
    assert first.state == TrainingRun.State.PROMOTED and first.metrics["n_holdout"] >= promotion.MIN_HOLDOUT
    world.brand.refresh_from_db()  # its live model now suggests

    accepted, picked = converse[20:25], converse[25:]
    bulk.apply(world.brand, [a.pk for a in accepted], world.olga, accept=True)  # the model's own guesses
    bulk.apply(world.brand, [a.pk for a in picked], world.olga, tag_ids=[shoes.tags["converse"]])  # a person's
    assert any(promotion.is_holdout(a.sha256) for a in accepted), "precondition: a guess in the bucket"
    assert any(promotion.is_holdout(a.sha256) for a in picked), "precondition: a pick in the bucket"
    assert Label.objects.filter(asset__in=accepted, is_current=True, batch__kind=BulkAction.Kind.ACCEPT_SUGGESTIONS) \
        .count() == len(accepted)

    data = training_data.collect(world.brand)
    held = dict(zip(data.asset_ids.tolist(), data.holdout.tolist()))
    trains = dict(zip(data.asset_ids.tolist(), data.train_mask.tolist()))
    assert all(not held[a.pk] and trains[a.pk] for a in accepted)  # they train, never judge
    assert all(held[a.pk] == promotion.is_holdout(a.sha256) for a in picked)

    second = training.train_now(world.brand)
    assert second.metrics["n_holdout"] == first.metrics["n_holdout"] + sum(
        promotion.is_holdout(a.sha256) for a in picked)
    assert second.metrics["n_train"] == first.metrics["n_train"] + len(accepted) + sum(
        not promotion.is_holdout(a.sha256) for a in picked)


def _assets(data: training_data.Dataset) -> list:
    from labeling.models import Asset

    found = Asset.objects.in_bulk(data.asset_ids.tolist())
    return [found[a] for a in data.asset_ids.tolist()]


def test_a_multi_label_tag_added_mid_way_leaves_earlier_labels_unknown_not_no(world, shoes):
    from labeling.models import Tag, Taxonomy

    look = Taxonomy.objects.create(client=world.acme, name="look", kind=Taxonomy.Kind.MULTI)
    brand = {b: Tag.objects.create(taxonomy=look, name=b, position=i).pk
             for i, b in enumerate(("adidas", "converse", "nike"))}
    early = [a for b in brand for a in shoes.by_brand[b][:18]]
    for a in early:
        labels.save_label(look, a, [brand[_brand_of(shoes, a)]], world.olga)
    swoosh = Tag.objects.create(taxonomy=look, name="swoosh", position=3)  # added mid-way: nike's logo
    late = [a for b in brand for a in shoes.by_brand[b][18:26]]
    for a in late:
        b = _brand_of(shoes, a)
        labels.save_label(look, a, [brand[b]] + ([swoosh.pk] if b == "nike" else []), world.olga)
    again = shoes.by_brand["adidas"][0]  # an early label saved again once swoosh exists: its "no" counts
    labels.save_label(look, again, [brand["adidas"]], world.olga)

    data = training_data.collect(look)
    col = data.tag_ids.index(swoosh.pk)
    known = dict(zip(data.asset_ids.tolist(), data.known[:, col].tolist()))
    assert not any(known[a.pk] for a in early if a != again)
    assert all(known[a.pk] for a in late) and known[again.pk]
    assert data.known[:, :col].all()  # the brands existed before every label

    run = training.train_now(look)
    assert run.state == TrainingRun.State.PROMOTED, run.error
    # held-out scores for swoosh count only labels that could have said it
    held = [a for a in early + late if promotion.is_holdout(a.sha256) and a != again]
    held_late = [a for a in held if a in late]
    assert run.metrics["n_holdout"] == len(held) and any(a in early for a in held), "precondition"
    swoosh_scores = run.metrics["per_tag"]["swoosh"]
    assert swoosh_scores["support"] == sum(_brand_of(shoes, a) == "nike" for a in held_late)
    # the 18 early nike photos did not teach "not swoosh": unlabeled nike photos get it
    mv = run.model_version
    rest = [a.pk for a in shoes.by_brand["nike"][26:]]
    p = [s.probs[mv.tag_ids.index(swoosh.pk)] for s in Suggestion.objects.filter(model_version=mv, asset_id__in=rest)]
    others = [a.pk for b in ("adidas", "converse") for a in shoes.by_brand[b][26:]]
    q = [s.probs[mv.tag_ids.index(swoosh.pk)] for s in Suggestion.objects.filter(model_version=mv, asset_id__in=others)]
    assert len(p) == len(rest) and np.mean(p) > 0.5 > np.mean(q)


def _brand_of(shoes, asset) -> str:
    return next(b for b, assets in shoes.by_brand.items() if asset in assets)


COPIES = 10  # per brand: the first photos, shrunk to 75 % and saved again at JPEG quality 70


def test_a_photo_and_its_resized_re_encoded_copy_land_on_the_same_side_of_the_held_out_split(world, shoes, tmp_path):
    from PIL import Image

    originals = [a for b in shoes.by_brand for a in shoes.by_brand[b][:COPIES]]
    for a in originals:  # imported after the originals: higher asset ids
        path = tmp_path / "copies" / _brand_of(shoes, a) / f"copy-{a.pk}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(a.file.path) as im:
            im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4)).save(path, "JPEG", quality=70)
    importing.import_paths(world.acme, tmp_path / "copies")
    copy_of = {a.pk: world.acme.assets.get(original_name=f"{_brand_of(shoes, a)}/copy-{a.pk}.jpg") for a in originals}
    for brand, assets in shoes.by_brand.items():
        _label(world, shoes, brand, assets + [copy_of[a.pk] for a in assets[:COPIES]])
    split = [(promotion.is_holdout(a.sha256), promotion.is_holdout(copy_of[a.pk].sha256)) for a in originals]
    assert (True, False) in split and (False, True) in split, "precondition: twins the hash alone would split"

    data = training_data.collect(world.brand)
    held = dict(zip(data.asset_ids.tolist(), data.holdout.tolist()))
    assert data.compared and not data.moved.any(), "precondition: rules 1 and 2 decide"
    # both on the side of the older one (lower id), whichever bucket the copy's hash is in
    assert [(held[a.pk], held[copy_of[a.pk].pk]) for a in originals] == \
        [(promotion.is_holdout(a.sha256),) * 2 for a in originals]

    run = training.train_now(world.brand)  # the run splits the same way, and the gallery follows it
    assert run.state == TrainingRun.State.PROMOTED, run.error
    assert sorted(run.metrics["holdout_assets"]) == sorted(a for a, h in held.items() if h)
    assert run.metrics["n_holdout"] == sum(held.values())
    assert {g["asset"] for g in dashboard.gallery(world.brand)} <= set(run.metrics["holdout_assets"])
