"""Bulk actions: one transaction, one BulkAction, a Label and LabelEvent per asset, one
retrain check; undo as a whole; who may do it; client scoping."""
from __future__ import annotations

import pytest

from .conftest import login, make_user


@pytest.fixture
def checks(monkeypatch):
    """Retrain checks requested, by taxonomy id (no broker in these tests)."""
    from labeling.services import labels

    asked: list[int] = []
    monkeypatch.setattr(labels, "request_retrain_check", lambda taxonomy_id: asked.append(taxonomy_id) or True)
    return asked


def _post(client, url, body):
    return client.post(url, body, content_type="application/json")


def test_applying_a_tag_labels_every_selected_asset_in_one_action_with_one_retrain_check(
    world, trained, client, checks, django_capture_on_commit_callbacks
):
    from labeling.models import BulkAction, Label, LabelEvent

    open_ids = sorted(a for a in trained.assets if a not in trained.seeded)[:10]
    login(client, world.olga)
    with django_capture_on_commit_callbacks(execute=True):
        r = _post(client, f"/c/acme/t/{world.brand.pk}/bulk.json", {"assets": open_ids, "tags": [trained.tags["nike"]]})
    assert r.status_code == 200, r.content
    action = BulkAction.objects.get(pk=r.json()["action"])
    assert action.n_labels == 10 and action.kind == "apply_tags" and action.user == world.olga
    labels = Label.objects.filter(batch=action, is_current=True)
    assert sorted(labels.values_list("asset_id", flat=True)) == open_ids
    assert set(labels.values_list("tags", flat=True)) == {trained.tags["nike"]}
    assert LabelEvent.objects.filter(asset_id__in=open_ids, action="set", user=world.olga).count() == 10
    assert checks == [world.brand.pk]
    world.brand.refresh_from_db()
    assert world.brand.labels_since_train == 10


def test_applying_two_tags_in_a_multi_label_taxonomy_answers_both_tags_for_every_asset(world, trained, client, checks):
    from labeling.models import Tag, Taxonomy

    style = Taxonomy.objects.create(client=world.acme, name="style", kind=Taxonomy.Kind.MULTI)
    tags = [Tag.objects.create(taxonomy=style, name=n, position=i).pk for i, n in enumerate(("outdoor", "studio", "people"))]
    picked = sorted(trained.assets)[:4]
    login(client, world.olga)
    r = _post(client, f"/c/acme/t/{style.pk}/bulk.json", {"assets": picked, "tags": [tags[2], tags[0]]})
    assert r.status_code == 200, r.content
    assert r.json()["labels"] == {str(a): sorted([tags[0], tags[2]]) for a in picked}


def test_a_tag_applied_in_bulk_to_a_multi_label_taxonomy_is_added_to_the_tags_each_image_has(
        world, trained, client, checks):
    from labeling.models import Label, Tag, Taxonomy
    from labeling.services import bulk, labels

    style = Taxonomy.objects.create(client=world.acme, name="style", kind=Taxonomy.Kind.MULTI)
    outdoor, studio, red = (Tag.objects.create(taxonomy=style, name=n, position=i).pk
                            for i, n in enumerate(("outdoor", "studio", "red")))
    first, second = (trained.assets[a] for a in sorted(trained.assets)[:2])
    labels.save_label(style, first, [outdoor, studio], user=world.alice)  # a colleague's work
    login(client, world.olga)
    r = _post(client, f"/c/acme/t/{style.pk}/bulk.json", {"assets": [first.pk, second.pk], "tags": [red]})
    assert r.status_code == 200, r.content
    assert r.json()["labels"] == {str(first.pk): [outdoor, studio, red], str(second.pk): [red]}
    # undone, the colleague's label is back as it was
    bulk.undo(bulk.BulkAction.objects.get(pk=r.json()["action"]), world.olga)
    current = Label.objects.get(taxonomy=style, asset=first, is_current=True)
    assert sorted(current.tags.values_list("pk", flat=True)) == [outdoor, studio] and current.user == world.alice


def test_accepting_suggestions_gives_each_asset_its_own_suggested_tag(world, trained, checks):
    from labeling.models import Label, Suggestion
    from labeling.services import bulk

    open_ids = [a for a in trained.assets if a not in trained.seeded]
    action = bulk.apply(world.brand, open_ids, world.olga, accept=True)
    suggested = dict(Suggestion.objects.filter(model_version=world.brand.live_model, asset_id__in=open_ids)
                     .values_list("asset_id", "top1_tag_id"))
    assert bulk.stored_tags(action) == {a: [t] for a, t in suggested.items()} and action.n_labels == len(open_ids)
    assert set(Label.objects.filter(batch=action).values_list("source", flat=True)) == {"accepted"}


def test_accepting_suggestions_over_labeled_images_keeps_their_labels_and_counts_them(world, trained, client, checks):
    from labeling.models import Label

    selection = sorted(trained.assets)  # a whole cluster: some labeled by people already
    before = {lb.asset_id: (lb.pk, lb.source) for lb in Label.objects.filter(taxonomy=world.brand, is_current=True)}
    assert before and set(before) < set(selection)
    login(client, world.olga)
    r = _post(client, f"/c/acme/t/{world.brand.pk}/bulk.json", {"assets": selection, "accept": True})
    assert r.status_code == 200 and r.json()["kept"] == len(before)
    assert r.json()["n_labels"] == len(selection) - len(before) and not set(r.json()["labels"]) & {str(a) for a in before}
    after = {lb.asset_id: (lb.pk, lb.source) for lb in Label.objects.filter(taxonomy=world.brand, asset_id__in=list(before), is_current=True)}
    assert after == before


def test_undo_restores_every_assets_previous_label_and_records_it(world, trained, client, checks):
    from labeling.models import BulkAction, Label, LabelEvent
    from labeling.services import labels as label_service

    seeded, open_ids = trained.seeded[:2], [a for a in trained.assets if a not in trained.seeded][:3]
    before = {a: label_service.tag_ids_of(Label.objects.get(asset_id=a, is_current=True)) for a in seeded}
    world.brand.refresh_from_db()
    counter = world.brand.labels_since_train
    login(client, world.olga)
    action = _post(client, f"/c/acme/t/{world.brand.pk}/bulk.json",
                   {"assets": seeded + open_ids, "tags": [trained.tags["converse"]]}).json()["action"]
    r = _post(client, f"/c/acme/t/{world.brand.pk}/bulk/undo.json", {"action": action})
    assert r.status_code == 200 and r.json()["undone"] == 5
    for a in seeded:  # the earlier label is current again
        assert label_service.tag_ids_of(Label.objects.get(asset_id=a, is_current=True)) == before[a]
    assert not Label.objects.filter(asset_id__in=open_ids, taxonomy=world.brand).exists()
    assert LabelEvent.objects.filter(action="undo", asset_id__in=seeded + open_ids).count() == 5
    assert BulkAction.objects.get(pk=action).undone is not None
    world.brand.refresh_from_db()
    # 5 labels, then 5 undos: each one changed the training data (an undo never subtracts)
    assert world.brand.labels_since_train == counter + 10
    again = _post(client, f"/c/acme/t/{world.brand.pk}/bulk/undo.json", {"action": action})
    assert again.json()["undone"] == 0  # idempotent


def test_undo_keeps_a_label_given_after_the_bulk_action(world, trained, checks):
    from labeling.models import Label
    from labeling.services import bulk, labels

    a, b = [x for x in trained.assets if x not in trained.seeded][:2]
    action = bulk.apply(world.brand, [a, b], world.olga, tag_ids=[trained.tags["nike"]])
    labels.save_label(world.brand, trained.assets[a], [trained.tags["adidas"]], user=world.alice)
    assert len(bulk.undo(action, world.olga)) == 1
    assert labels.tag_ids_of(Label.objects.get(asset_id=a, is_current=True)) == [trained.tags["adidas"]]
    assert not Label.objects.filter(asset_id=b).exists()


def test_a_viewer_cannot_bulk_apply_and_only_the_author_or_an_admin_may_undo(world, trained, client, checks):
    from labeling.models import Label, Membership, Role

    ids = [a for a in trained.assets if a not in trained.seeded][:2]
    url = f"/c/acme/t/{world.brand.pk}/bulk.json"
    login(client, world.vic)
    assert _post(client, url, {"assets": ids, "tags": [trained.tags["nike"]]}).status_code == 403
    assert not Label.objects.filter(asset_id__in=ids).exists()
    login(client, world.olga)
    action = _post(client, url, {"assets": ids, "tags": [trained.tags["nike"]]}).json()["action"]
    other = make_user("oscar")
    Membership.objects.create(user=other, client=world.acme, role=Role.OPERATOR)
    login(client, other)
    assert _post(client, f"/c/acme/t/{world.brand.pk}/bulk/undo.json", {"action": action}).status_code == 403
    login(client, world.alice)
    assert _post(client, f"/c/acme/t/{world.brand.pk}/bulk/undo.json", {"action": action}).json()["undone"] == 2


def test_another_clients_assets_or_taxonomy_are_not_found_and_nothing_is_saved(world, trained, client, checks):
    from labeling.models import Asset, BulkAction, Label

    theirs = Asset.objects.create(client=world.globex, original_name="x.jpg", sha256="f" * 64, byte_size=1,
                                  width=1, height=1)
    mine = [a for a in trained.assets if a not in trained.seeded][:2]
    login(client, world.olga)
    r = _post(client, f"/c/acme/t/{world.brand.pk}/bulk.json", {"assets": mine + [theirs.pk], "tags": [trained.tags["nike"]]})
    assert r.status_code == 404
    assert not Label.objects.filter(asset_id__in=mine + [theirs.pk]).exists() and not BulkAction.objects.exists()
    login(client, world.otto)
    assert _post(client, f"/c/acme/t/{world.brand.pk}/bulk.json", {"assets": mine, "tags": [trained.tags["nike"]]}).status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"assets": [], "tags": [1]}, "assets"),
    ({"assets": "1,2", "tags": [1]}, "assets"),
    ({"assets": [1], "tags": [1], "accept": True}, "tags"),
    ({"assets": [1]}, "tags"),
])
def test_bad_bulk_input_is_a_400_naming_the_field(world, client, body, field):
    login(client, world.olga)
    r = _post(client, f"/c/acme/t/{world.brand.pk}/bulk.json", body)
    assert r.status_code == 400 and r.json()["field"] == field, r.content


def test_undoing_a_bulk_action_takes_the_same_few_queries_for_3_labels_or_21(
        world, trained, checks, django_assert_max_num_queries):
    from labeling.models import BulkAction, Label
    from labeling.services import bulk

    open_ids = [a for a in trained.assets if a not in trained.seeded]
    seeded = trained.seeded[:3]  # these have a label to go back to
    small = bulk.apply(world.brand, open_ids[:2] + seeded[:1], world.olga, tag_ids=[trained.tags["nike"]])
    large = bulk.apply(world.brand, open_ids[2:] + seeded[1:], world.olga, tag_ids=[trained.tags["nike"]])
    assert len(open_ids[2:] + seeded[1:]) >= 15
    with django_assert_max_num_queries(20):
        assert len(bulk.undo(BulkAction.objects.get(pk=small.pk), world.olga)) == 3
    with django_assert_max_num_queries(20):
        assert len(bulk.undo(BulkAction.objects.get(pk=large.pk), world.olga)) == len(open_ids[2:] + seeded[1:])
    assert not Label.objects.filter(taxonomy=world.brand, asset_id__in=open_ids).exists()
    assert Label.objects.filter(taxonomy=world.brand, asset_id__in=seeded, is_current=True).count() == 3
