"""A client admin manages the client's members (page and API) without Django staff rights;
nobody else can, another client's members are out of reach, and a client always keeps an
admin, even when two admins demote each other at the same moment (PostgreSQL)."""
from __future__ import annotations

import re
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client as HttpClient
from django.urls import reverse
from rest_framework.test import APIClient

from labeling.models import Lease, Membership, Role
from labeling.services import members
from tests._helpers import api, make_asset
from tests.conftest import login, make_user

pytestmark = pytest.mark.django_db
User = get_user_model()


def page(slug: str = "acme") -> str:
    return reverse("members", args=[slug])


def update_url(membership: Membership) -> str:
    return reverse("member_update", args=[membership.client.slug, membership.pk])


def membership(user, client) -> Membership:
    return Membership.objects.get(user=user, client=client)


# --- the page ---------------------------------------------------------------------------------

def test_the_admin_sees_their_clients_members_and_no_one_elses(client, world):
    login(client, world.alice)
    body = client.get(page()).content.decode()
    listed = re.findall(r'data-username="([^"]+)"', body)
    assert listed == ["alice", "olga", "vic"]
    assert "otto" not in body  # globex's operator
    assert reverse("members", args=["acme"]) in client.get(reverse("client_home", args=["acme"])).content.decode()


@pytest.mark.parametrize("who, status", [("olga", 403), ("vic", 403), ("otto", 404), ("nobody", 404)])
def test_colleagues_are_told_the_page_is_for_admins_and_anyone_else_gets_a_404(client, world, who, status):
    login(client, getattr(world, who))
    r = client.get(page())
    assert r.status_code == status and (status == 404 or "This page is for admins of Acme" in r.content.decode())
    r = client.post(page(), {"username": "mallory", "role": "admin"})
    assert r.status_code == status
    assert not User.objects.filter(username="mallory").exists()


def test_adding_a_new_person_creates_an_account_whose_one_time_password_works(client, world):
    login(client, world.alice)
    r = client.post(page(), {"username": "newbie", "email": "newbie@example.com", "role": "operator"})
    assert r.status_code == 200
    password = re.search(r'id="new-password">([^<]+)<', r.content.decode()).group(1)
    assert "no-store" in r["Cache-Control"]
    m = membership(User.objects.get(username="newbie"), world.acme)
    assert m.role == Role.OPERATOR and m.user.email == "newbie@example.com"

    newbie = HttpClient()
    assert newbie.login(username="newbie", password=password)
    assert newbie.get(reverse("review", args=["acme", world.brand.pk])).status_code == 200
    assert newbie.get(reverse("client_home", args=["globex"])).status_code == 404


def test_adding_a_user_the_admin_already_administers_elsewhere_gives_access_without_a_new_password(client, world):
    Membership.objects.create(user=world.alice, client=world.globex, role=Role.ADMIN)
    login(client, world.alice)
    r = client.post(page(), {"username": "otto", "role": "viewer"})
    body = r.content.decode()
    assert r.status_code == 200 and 'id="new-password"' not in body and "already have" in body
    assert membership(world.otto, world.acme).role == Role.VIEWER
    assert membership(world.otto, world.globex).role == Role.OPERATOR  # their other client is untouched


def test_an_account_outside_the_admins_clients_cannot_be_pulled_in(client, world):
    # otto works only for globex: acme's admin must not attach him, nor read his e-mail.
    world.otto.email = "otto@globex.example"
    world.otto.save()
    login(client, world.alice)
    r = client.post(page(), {"username": "otto", "role": "admin"})
    assert r.status_code == 400 and "username: otto is taken by an account outside your clients" in r.content.decode()
    assert "otto@globex.example" not in r.content.decode()
    r = api(world.alice).post("/api/v1/clients/acme/members/", {"username": "otto", "role": "admin"}, format="json")
    assert r.status_code == 400 and "outside your clients" in r.json()["username"][0]
    assert "otto@globex.example" not in r.content.decode()
    world.otto.refresh_from_db()
    assert not Membership.objects.filter(user=world.otto, client=world.acme).exists() and not world.otto.is_staff


@pytest.mark.parametrize("form, field", [
    ({"username": "", "role": "operator"}, "username: may not be blank"),
    ({"username": "two words", "role": "operator"}, "username: letters, digits"),
    ({"username": "x" * 151, "role": "operator"}, "username: at most 150"),
    ({"username": "fine", "role": "owner"}, "role: must be one of"),
    ({"username": "fine", "role": "operator", "email": "not-an-address"}, "email: not an e-mail"),
    ({"username": "olga", "role": "viewer"}, "username: olga is already a member of Acme"),
])
def test_bad_input_is_refused_with_a_message_naming_the_field(client, world, form, field):
    login(client, world.alice)
    n_users = User.objects.count()
    r = client.post(page(), form)
    assert r.status_code == 400
    assert field in r.content.decode()
    assert User.objects.count() == n_users
    assert membership(world.olga, world.acme).role == Role.OPERATOR


def test_the_admin_changes_a_role_and_removes_a_member(client, world):
    login(client, world.alice)
    r = client.post(update_url(membership(world.vic, world.acme)), {"action": "role", "role": "operator"})
    assert r.status_code == 302 and membership(world.vic, world.acme).role == Role.OPERATOR
    assert "vic is now operator" in client.get(page()).content.decode()

    asset = make_asset(world.acme, 1)
    Lease.objects.create(taxonomy=world.brand, asset=asset, user=world.olga, expires="2999-01-01T00:00Z")
    r = client.post(update_url(membership(world.olga, world.acme)), {"action": "remove"})
    assert r.status_code == 302
    assert not Membership.objects.filter(user=world.olga, client=world.acme).exists()
    assert not Lease.objects.filter(user=world.olga).exists()  # colleagues get her leased assets now
    olga = HttpClient()
    olga.force_login(world.olga)
    assert olga.get(reverse("client_home", args=["acme"])).status_code == 404


def test_another_clients_membership_id_is_a_404_and_stays_as_it_was(client, world):
    login(client, world.alice)
    otto = membership(world.otto, world.globex)
    assert client.post(update_url(otto).replace("/globex/", "/acme/"), {"action": "remove"}).status_code == 404
    assert client.post(update_url(otto), {"action": "remove"}).status_code == 404
    assert Membership.objects.filter(pk=otto.pk).exists()


def test_the_last_admin_can_neither_be_demoted_nor_removed(client, world):
    login(client, world.alice)
    mine = membership(world.alice, world.acme)
    for data in ({"action": "role", "role": "operator"}, {"action": "remove"}):
        r = client.post(update_url(mine), data)
        assert r.status_code == 400 and "only admin of Acme" in r.content.decode()
    assert membership(world.alice, world.acme).role == Role.ADMIN

    # With a second admin, alice may step down; she then has no members page any more.
    client.post(update_url(membership(world.olga, world.acme)), {"action": "role", "role": "admin"})
    world.olga.refresh_from_db()
    assert world.olga.is_staff  # admins edit taxonomies in Django admin
    r = client.post(update_url(mine), {"action": "role", "role": "viewer"})
    assert r.status_code == 302 and r["Location"] == reverse("home")
    assert client.get(page()).status_code == 403  # a viewer of acme now


# --- the API ------------------------------------------------------------------------------------

def test_the_api_lists_adds_changes_and_removes_members(world):
    c = api(world.alice)
    listed = c.get("/api/v1/clients/acme/members/").json()
    assert [(m["username"], m["role"]) for m in listed] == [("alice", "admin"), ("olga", "operator"), ("vic", "viewer")]

    r = c.post("/api/v1/clients/acme/members/", {"username": "bot", "role": "operator"}, format="json")
    assert r.status_code == 201 and r.json()["password"] and r["Cache-Control"] == "no-store"
    bot_client = APIClient()
    token = bot_client.post("/api/v1/auth/token/", {"username": "bot", "password": r.json()["password"]},
                            format="json").json()["token"]
    bot_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert [x["slug"] for x in bot_client.get("/api/v1/clients/").json()] == ["acme"]

    Membership.objects.create(user=world.alice, client=world.globex, role=Role.ADMIN)  # alice knows otto
    again = c.post("/api/v1/clients/acme/members/", {"username": "otto"}, format="json")
    assert again.status_code == 201 and again.json()["password"] is None and again.json()["role"] == "operator"

    url = f"/api/v1/clients/acme/members/{r.json()['id']}/"
    assert c.patch(url, {"role": "viewer"}, format="json").json()["role"] == "viewer"
    assert c.delete(url).status_code == 204
    assert bot_client.get("/api/v1/clients/").json() == []


def test_the_api_names_the_field_and_keeps_the_last_admin(world):
    c = api(world.alice)
    bad = c.post("/api/v1/clients/acme/members/", {"username": "a b", "role": "admin"}, format="json")
    assert bad.status_code == 400 and "username" in bad.json()
    assert c.post("/api/v1/clients/acme/members/", {"username": "z", "role": "boss"},
                  format="json").json().keys() == {"role"}
    mine = f"/api/v1/clients/acme/members/{membership(world.alice, world.acme).pk}/"
    r = c.patch(mine, {"role": "operator"}, format="json")
    assert r.status_code == 400 and "only admin" in r.json()["role"][0]
    assert c.delete(mine).status_code == 400
    assert membership(world.alice, world.acme).role == Role.ADMIN


def test_the_api_is_closed_to_operators_viewers_and_other_clients(world):
    otto = membership(world.otto, world.globex)
    for user, status in ((world.olga, 403), (world.vic, 403), (world.otto, 404)):
        assert api(user).get("/api/v1/clients/acme/members/").status_code == status
        assert api(user).post("/api/v1/clients/acme/members/", {"username": "eve"}, format="json").status_code == status
    assert api(world.alice).get(f"/api/v1/clients/acme/members/{otto.pk}/").status_code == 404
    assert api(world.alice).delete(f"/api/v1/clients/globex/members/{otto.pk}/").status_code == 404
    assert api(world.alice).get("/api/v1/clients/globex/members/").status_code == 404
    assert not User.objects.filter(username="eve").exists()


def test_django_admin_offers_a_client_admin_only_users_of_their_own_clients(client, world):
    world.alice.is_staff = True
    world.alice.save()
    login(client, world.alice)
    body = client.get("/admin/labeling/membership/add/").content.decode()
    assert ">olga<" in body and ">vic<" in body
    assert ">otto<" not in body and ">nobody<" not in body


# --- two admins demote each other at once --------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_two_admins_demoting_each_other_at_once_leave_one_admin(world):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL row locks (SQLite serialises writers anyway)")
    bob = make_user("bob")
    Membership.objects.create(user=bob, client=world.acme, role=Role.ADMIN)
    a, b = membership(world.alice, world.acme), membership(bob, world.acme)
    start, outcomes = threading.Barrier(2), []

    def demote(m: Membership) -> None:
        start.wait()
        try:
            members.change_role(m, Role.OPERATOR)
            outcomes.append("demoted")
        except members.MemberError:
            outcomes.append("refused")
        finally:
            connection.close()

    for _ in range(5):
        Membership.objects.filter(pk__in=[a.pk, b.pk]).update(role=Role.ADMIN)
        outcomes.clear()
        threads = [threading.Thread(target=demote, args=(m,)) for m in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["demoted", "refused"]
        assert Membership.objects.filter(client=world.acme, role=Role.ADMIN).count() == 1


def test_a_new_member_replaces_the_one_time_password(client, world):
    _, password = members.add_member(world.acme, "newbie", Role.OPERATOR)
    newbie = HttpClient()
    assert newbie.login(username="newbie", password=password)
    form = newbie.get(reverse("password_change"))
    assert form.status_code == 200 and b'name="new_password2"' in form.content
    short = newbie.post(reverse("password_change"), {"old_password": password, "new_password1": "abc",
                                                      "new_password2": "abc"})
    assert short.status_code == 200 and b"too short" in short.content
    r = newbie.post(reverse("password_change"), {"old_password": password, "new_password1": "a-longer-secret-42",
                                                  "new_password2": "a-longer-secret-42"}, follow=True)
    assert b"Your password was changed." in r.content
    assert not HttpClient().login(username="newbie", password=password)
    assert HttpClient().login(username="newbie", password="a-longer-secret-42")


def test_a_new_admin_edits_only_their_clients_taxonomies_in_django_admin(client, world):
    _, password = members.add_member(world.acme, "ada", Role.ADMIN)
    ada = HttpClient()
    assert ada.login(username="ada", password=password)
    listing = ada.get("/admin/labeling/taxonomy/")
    assert listing.status_code == 200
    assert f"/admin/labeling/taxonomy/{world.brand.pk}/change/" in listing.content.decode()
    assert ada.get(f"/admin/labeling/taxonomy/{world.other_tax.pk}/change/").status_code in (302, 404)


def test_a_client_admin_deletes_an_unused_tag_in_django_admin_but_only_retires_one_in_use(client, world):
    from labeling.models import Asset, Tag
    from labeling.services import labels

    _, password = members.add_member(world.acme, "ada", Role.ADMIN)
    ada = HttpClient()
    assert ada.login(username="ada", password=password)
    typo = Tag.objects.create(taxonomy=world.brand, name="nkie")
    used = world.brand.tags.get(name="nike")
    asset = Asset.objects.create(client=world.acme, original_name="a.png", sha256="1" * 64, byte_size=1, width=1,
                                 height=1, format="PNG", file="x.png")
    labels.save_label(world.brand, asset, [used.pk], world.olga, notify=False)
    refused = ada.get(f"/admin/labeling/tag/{used.pk}/delete/", follow=True)  # labels carry it: retire it
    assert refused.redirect_chain[-1][0] == f"/admin/labeling/tag/{used.pk}/change/"
    assert "is used by labels or models, so it can&#x27;t be deleted" in refused.content.decode()
    assert ada.get(f"/admin/labeling/tag/{world.other_tax.tags.get().pk}/delete/").status_code in (302, 403, 404)
    assert ada.post(f"/admin/labeling/tag/{typo.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Tag.objects.filter(pk=typo.pk).exists() and Tag.objects.filter(pk=used.pk).exists()


def test_a_username_that_differs_only_in_case_is_the_existing_account_never_a_second_one(client, world):
    from django.contrib.auth import get_user_model

    login(client, world.alice)
    r = client.post(page(), {"username": "OTTO", "role": "viewer"})  # otto works for globex only
    assert "taken by an account outside your clients" in r.content.decode()
    Membership.objects.create(user=world.alice, client=world.globex, role=Role.ADMIN)
    client.post(page(), {"username": "Otto", "role": "viewer"})
    assert membership(world.otto, world.acme).role == Role.VIEWER
    assert get_user_model().objects.filter(username__iexact="otto").count() == 1


def test_create_client_makes_a_client_and_its_first_admin_and_names_bad_input(world):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from labeling.models import Client, Membership, Role

    out = StringIO()
    call_command("create_client", "initech", "Initech", "--admin", "peter", stdout=out)
    client = Client.objects.get(slug="initech")
    member = Membership.objects.get(client=client)
    assert member.role == Role.ADMIN and member.user.username == "peter" and member.user.is_staff
    assert "password (shown once): " in out.getvalue()
    assert member.user.check_password(out.getvalue().rsplit(": ", 1)[1].strip())
    with pytest.raises(CommandError, match="slug"):
        call_command("create_client", "initech", "Again", "--admin", "peter", stdout=StringIO())
    with pytest.raises(CommandError, match="slug"):
        call_command("create_client", "not a slug", "X", "--admin", "peter", stdout=StringIO())
    assert Client.objects.filter(name="Again").count() == 0
