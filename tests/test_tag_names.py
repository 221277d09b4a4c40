"""Tag names are unique among siblings, not across a taxonomy: 'footwear / nike' and
'logos / nike' are two tags, as a hierarchical taxonomy needs. The API, the database, a
manifest import and an import by folder names each follow that; a folder name that several
parents share is not guessed at. Real shoe photos for the imports."""
from __future__ import annotations

import shutil

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from labeling.models import Tag
from labeling.services import importing
from tests._helpers import api
from tests.test_import_manifest import export, fresh_taxonomy, library, lines, paths_by_sha, quiet  # noqa: F401
from tests.test_import_manifest import tags as make_tags

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def tags_url(taxonomy) -> str:
    return f"/api/v1/clients/{taxonomy.client.slug}/taxonomies/{taxonomy.pk}/tags/"


def test_two_parents_may_each_have_a_child_of_the_same_name_through_the_api(world):
    c = api(world.alice)
    footwear = c.post(tags_url(world.brand), {"name": "footwear"}, format="json").json()
    logos = c.post(tags_url(world.brand), {"name": "logos"}, format="json").json()

    shoe = c.post(tags_url(world.brand), {"name": "Nike", "parent": footwear["id"]}, format="json")
    mark = c.post(tags_url(world.brand), {"name": "nike", "parent": logos["id"]}, format="json")

    assert shoe.status_code == 201 and mark.status_code == 201, (shoe.content, mark.content)
    assert {shoe.json()["path"], mark.json()["path"]} == {"footwear / Nike", "logos / nike"}
    assert Tag.objects.filter(taxonomy=world.brand, name__iexact="nike").count() == 3, "the top-level one too"


def test_a_sibling_name_differing_only_in_case_is_refused_by_the_api_and_the_database(world):
    c = api(world.alice)
    logos = Tag.objects.create(taxonomy=world.brand, name="logos")
    Tag.objects.create(taxonomy=world.brand, name="nike", parent=logos)

    r = c.post(tags_url(world.brand), {"name": "NIKE", "parent": logos.pk}, format="json")

    assert r.status_code == 400 and r.json()["name"] == ["this tag's parent already has a child with this name"]
    with pytest.raises(IntegrityError), transaction.atomic():
        Tag.objects.create(taxonomy=world.brand, name="Nike", parent=logos)
    with pytest.raises(IntegrityError), transaction.atomic():  # two top-level tags: NULL parents clash too
        Tag.objects.create(taxonomy=world.brand, name="ADIDAS")
    with pytest.raises(ValidationError, match="top-level tag with this name"):
        Tag(taxonomy=world.brand, name="Converse").full_clean()  # what the admin's forms run


def test_moving_or_renaming_a_tag_onto_a_siblings_name_is_refused(world):
    c = api(world.alice)
    logos = Tag.objects.create(taxonomy=world.brand, name="logos")
    Tag.objects.create(taxonomy=world.brand, name="nike", parent=logos)
    top_nike = Tag.objects.get(taxonomy=world.brand, name="nike", parent=None)
    puma = Tag.objects.create(taxonomy=world.brand, name="puma", parent=logos)

    moved = c.patch(tags_url(world.brand) + f"{top_nike.pk}/", {"parent": logos.pk}, format="json")
    renamed = c.patch(tags_url(world.brand) + f"{puma.pk}/", {"name": "Nike"}, format="json")
    elsewhere = c.patch(tags_url(world.brand) + f"{puma.pk}/", {"name": "Nike", "parent": None}, format="json")

    assert moved.status_code == 400 and "already has a child" in moved.json()["name"][0]
    assert renamed.status_code == 400 and "already has a child" in renamed.json()["name"][0]
    assert elsewhere.status_code == 400 and "top-level tag" in elsewhere.json()["name"][0], "the top 'nike' is there"
    assert c.patch(tags_url(world.brand) + f"{puma.pk}/", {"name": "Puma"}, format="json").status_code == 200


def test_an_export_with_one_leaf_name_under_two_parents_comes_back_whole(world, shoe_paths, tmp_path):
    look = fresh_taxonomy(world.acme, "look")
    t = make_tags(look, "footwear", "footwear / nike", "logos", "logos / nike")
    photos = shoe_paths["train"]["nike"][:3]
    library(world.acme, look, photos, [(t["footwear / nike"],), (t["logos / nike"],),
                                       (t["footwear / nike"], t["logos / nike"])])
    fresh = fresh_taxonomy(world.globex, "look")

    job = importing.import_paths(world.globex, export(look, tmp_path), labels_taxonomy=fresh)

    assert (job.n_created, job.n_labeled) == (3, 3), job.errors
    assert paths_by_sha(world.globex, fresh) == paths_by_sha(world.acme, look)
    assert sorted(t.path for t in fresh.tags.all()) == ["footwear", "footwear / nike", "logos", "logos / nike"]


def test_a_folder_name_several_parents_share_is_named_and_not_guessed(world, shoe_paths, tmp_path):
    look = fresh_taxonomy(world.acme, "look", multi=False)
    make_tags(look, "footwear", "footwear / nike", "logos", "logos / nike", "logos / puma")
    src = tmp_path / "src"
    for folder, brand in (("nike", "nike"), ("puma", "adidas")):
        (src / folder).mkdir(parents=True)
        for p in shoe_paths["train"][brand][:2]:
            shutil.copy(p, src / folder / p.name)

    job = importing.import_paths(world.acme, src, labels_taxonomy=look)

    assert job.n_created == 4 and job.n_labeled == 2, job.errors
    assert sorted(sum(paths_by_sha(world.acme, look).values(), [])) == ["logos / puma"] * 2, "the one 'puma'"
    assert ("nike/: not labeled: the folder name 'nike' is a tag under several parents ('footwear / nike', "
            "'logos / nike'); a labels.csv row can name one by its path") in lines(job)
    Tag.objects.create(taxonomy=look, name="Nike")  # a top-level tag of the name is the folder's
    again = importing.import_paths(world.acme, src, labels_taxonomy=look)
    assert again.n_labeled == 2 and sorted(sum(paths_by_sha(world.acme, look).values(), [])) == \
        ["Nike", "Nike", "logos / puma", "logos / puma"]


def test_the_admin_page_refuses_two_new_siblings_of_one_name_and_allows_them_under_two_parents(world, client):
    world.alice.is_staff = True
    world.alice.save()
    client.force_login(world.alice)
    logos = Tag.objects.create(taxonomy=world.brand, name="logos")
    form = {"client": world.acme.pk, "name": "brand", "kind": "single", "retrain_threshold": 6,
            "tags-TOTAL_FORMS": 2, "tags-INITIAL_FORMS": 0, "tags-MIN_NUM_FORMS": 0, "tags-MAX_NUM_FORMS": 1000,
            "tags-0-name": "puma", "tags-0-parent": logos.pk, "tags-0-position": 10,
            "tags-1-name": "Puma", "tags-1-parent": logos.pk, "tags-1-position": 11}
    url = f"/admin/labeling/taxonomy/{world.brand.pk}/change/"

    refused = client.post(url, form)

    assert refused.status_code == 200 and "this tag&#x27;s parent already has a child with this name" in \
        refused.content.decode()
    assert not Tag.objects.filter(taxonomy=world.brand, name__iexact="puma").exists()
    form["tags-1-parent"] = ""  # the second one at the top level instead
    assert client.post(url, form).status_code == 302
    assert sorted(t.path for t in Tag.objects.filter(taxonomy=world.brand, name__iexact="puma")) == \
        ["Puma", "logos / puma"]


def test_a_flat_exports_tag_comes_back_top_level_and_the_report_names_its_namesake(world, shoe_paths, tmp_path):
    flat = fresh_taxonomy(world.acme, "flat", multi=False)
    library(world.acme, flat, shoe_paths["train"]["nike"][:2], [(make_tags(flat, "nike")["nike"],)] * 2)
    tree = fresh_taxonomy(world.globex, "tree", multi=False)
    make_tags(tree, "shoes", "shoes / nike")

    job = importing.import_paths(world.globex, export(flat, tmp_path), labels_taxonomy=tree)

    assert job.n_labeled == 2 and sorted(sum(paths_by_sha(world.globex, tree).values(), [])) == ["nike", "nike"]
    assert "labels.csv: new tag 'nike' created in taxonomy 'tree', beside 'shoes / nike'" in lines(job)


def test_an_image_labeled_with_a_namesake_under_a_parent_is_named_as_kept_when_its_folder_means_another(
        world, shoe_paths, tmp_path):
    look = fresh_taxonomy(world.acme, "look", multi=False)
    t = make_tags(look, "nike", "logos", "logos / nike")
    photo = shoe_paths["train"]["nike"][0]
    library(world.acme, look, [photo], [(t["logos / nike"],)])
    (tmp_path / "src" / "nike").mkdir(parents=True)
    shutil.copy(photo, tmp_path / "src" / "nike" / "again.jpg")

    job = importing.import_paths(world.acme, tmp_path / "src", labels_taxonomy=look)

    assert job.n_labeled == 0 and sum(paths_by_sha(world.acme, look).values(), []) == ["logos / nike"]
    assert any("already labeled 'logos / nike'" in line and "its folder says 'nike': kept 'logos / nike'" in line
               for line in lines(job)), lines(job)
