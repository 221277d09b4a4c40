"""Label service: current label, history events, undo, bulk saves."""
from __future__ import annotations

import pytest

from labeling.models import Label, LabelEvent, Suggestion, Tag
from labeling.services import labels


@pytest.fixture
def asset(shoe_library):
    assets, _ = shoe_library
    return next(iter(assets.values()))


def tag(world, name: str) -> int:
    return world.brand.tags.get(name=name).pk


def test_relabeling_keeps_the_old_label_as_history_and_one_current(world, asset):
    first = labels.save_label(world.brand, asset, [tag(world, "nike")], world.olga)
    second = labels.save_label(world.brand, asset, [tag(world, "adidas")], world.alice)
    assert Label.objects.filter(asset=asset, is_current=True).get() == second
    assert Label.objects.get(pk=first.pk).is_current is False
    events = list(LabelEvent.objects.filter(asset=asset).order_by("id"))
    assert [(e.user, e.before, e.after) for e in events] == [
        (world.olga, None, [tag(world, "nike")]),
        (world.alice, [tag(world, "nike")], [tag(world, "adidas")]),
    ]


def test_undo_restores_the_previous_label_and_records_it(world, asset):
    labels.save_label(world.brand, asset, [tag(world, "nike")], world.olga)
    labels.save_label(world.brand, asset, [tag(world, "adidas")], world.olga)
    undone = labels.undo_last(world.brand, world.olga)
    current = Label.objects.get(asset=asset, is_current=True)
    assert [t.name for t in current.tags.all()] == ["nike"]
    assert undone.asset_id == asset.pk
    last = LabelEvent.objects.filter(asset=asset).first()
    assert (last.action, last.before, last.after) == ("undo", [tag(world, "adidas")], [tag(world, "nike")])


def test_undo_of_the_only_label_puts_the_asset_back_in_the_queue(world, trained):
    asset_id = next(a for a in trained.assets if a not in trained.seeded)
    labels.save_label(world.brand, trained.assets[asset_id], [trained.tags["nike"]], world.olga)
    assert Suggestion.objects.get(asset_id=asset_id, model_version=world.brand.live_model).is_labeled
    labels.undo_last(world.brand, world.olga)
    assert not Label.objects.filter(asset_id=asset_id).exists()
    assert not Suggestion.objects.get(asset_id=asset_id, model_version=world.brand.live_model).is_labeled


def test_undo_only_touches_the_users_own_labels(world, asset):
    labels.save_label(world.brand, asset, [tag(world, "nike")], world.alice)
    assert labels.undo_last(world.brand, world.olga) is None
    assert Label.objects.filter(asset=asset, is_current=True).exists()


def test_accepting_the_suggestion_and_correcting_it_are_told_apart(world, trained):
    live = world.brand.live_model
    s1, s2 = Suggestion.objects.filter(model_version=live, is_labeled=False).order_by("id")[:2]
    accepted = labels.save_label(world.brand, s1.asset, [s1.top1_tag_id], world.olga)
    other = next(t for t in trained.tags.values() if t != s2.top1_tag_id)
    corrected = labels.save_label(world.brand, s2.asset, [other], world.olga)
    assert (accepted.source, corrected.source) == ("accepted", "corrected")
    assert accepted.suggestion == s1


@pytest.mark.parametrize(
    "tags,message",
    [([], "tags: pick at least one"), ([999999], "tags: unknown"), (["adidas", "nike"], "exactly one")],
)
def test_bad_tags_are_refused_with_the_field_named(world, asset, tags, message):
    ids = [tag(world, t) if isinstance(t, str) else t for t in tags]
    with pytest.raises(labels.LabelError, match=message):
        labels.save_label(world.brand, asset, ids, world.olga)
    assert not Label.objects.exists()


def test_a_retired_tag_cannot_be_used_but_its_labels_stay(world, asset):
    nike = Tag.objects.get(taxonomy=world.brand, name="nike")
    label = labels.save_label(world.brand, asset, [nike.pk], world.olga)
    nike.retired = True
    nike.save()
    with pytest.raises(labels.LabelError, match="retired"):
        labels.save_label(world.brand, asset, [nike.pk], world.olga)
    assert list(Label.objects.get(pk=label.pk).tags.all()) == [nike]


def test_an_asset_of_another_client_cannot_be_labeled_in_this_taxonomy(world, asset):
    with pytest.raises(labels.LabelError, match="asset"):
        labels.save_label(world.other_tax, asset, [world.other_tax.tags.get().pk], world.otto)


def test_each_label_counts_toward_the_retrain_once(world, shoe_library):
    assets, _ = shoe_library
    items = [(a, [tag(world, "nike")]) for a in list(assets.values())[:5]]
    assert labels.save_labels(world.brand, items, world.olga) == 5
    world.brand.refresh_from_db()
    assert world.brand.labels_since_train == 5
