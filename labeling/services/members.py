"""A client's members: who may look, label or administer it.

Client admins manage their own client's members here (the members page and the API), without
Django staff rights. Two rules hold whatever the caller does:
- a client never loses its last admin (demoting or removing them is refused), checked under a
  row lock so two admins demoting each other at once cannot both succeed;
- usernames are global (a person may work for several clients), so adding a username that
  exists adds that user -- but only a user the acting admin already administers in another
  client (or any user, for a superuser): otherwise one client's admin could pull in, and read
  the e-mail and last login of, any account on the site. A new user is created with a random
  password, shown once.
Admins edit taxonomies in Django admin, which needs `is_staff`: becoming an admin grants it.
It is never taken away here; a staff user without an admin role sees nothing there anyway
(labeling.admin scopes every page to the clients the user administers).
"""
from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from ..models import Client, Lease, Membership, Role

User = get_user_model()


class MemberError(ValueError):
    """Refused change, phrased "field: what is wrong" like the other services."""


def members(client: Client):
    return (Membership.objects.filter(client=client).select_related("user")
            .order_by("user__username"))


def _role(value: str) -> str:
    if value not in Role.values:
        raise MemberError(f"role: must be one of {', '.join(Role.values)}")
    return value


def _username(value: str) -> str:
    value = (value or "").strip()
    if not value:
        raise MemberError("username: may not be blank")
    limit = User._meta.get_field("username").max_length
    if len(value) > limit:
        raise MemberError(f"username: at most {limit} characters")
    try:
        User.username_validator(value)
    except ValidationError:
        raise MemberError("username: letters, digits and @ . + - _ only") from None
    return value


def _email(value: str) -> str:
    value = (value or "").strip()
    if value:
        try:
            validate_email(value)
        except ValidationError:
            raise MemberError("email: not an e-mail address") from None
    return value


def _may_attach(by, user) -> bool:
    """Whether `by` may add the existing account `user`: a superuser, or an admin who already
    administers a client `user` belongs to. `by` None is the system (demo, shell)."""
    if by is None or by.is_superuser:
        return True
    mine = Membership.objects.filter(user=by, role=Role.ADMIN).values("client_id")
    return Membership.objects.filter(user=user, client_id__in=mine).exists()


def add_member(client: Client, username: str, role: str = Role.OPERATOR,
               email: str = "", by=None) -> tuple[Membership, str | None]:
    """Adds the user called `username` (created when there is none) with `role`, on behalf
    of the admin `by`. Returns (membership, the new user's password or None for an existing user)."""
    username, role, email = _username(username), _role(role), _email(email)
    password = None
    with transaction.atomic():
        # "Op2" is the existing "op2", not a second account: the login lockout already counts
        # names case-blind, so two such accounts would lock each other out
        user = User.objects.filter(username__iexact=username).order_by("pk").first()
        if user is None:
            password = secrets.token_urlsafe(12)
            try:
                with transaction.atomic():
                    user = User.objects.create_user(username=username, email=email, password=password)
            except IntegrityError:  # created by a concurrent request a moment ago: use it
                user, password = User.objects.get(username=username), None
        if password is None and not _may_attach(by, user):
            raise MemberError(f"username: {username} is taken by an account outside your clients; "
                              "choose another username, or ask a site administrator to add this account")
        if not user.is_active:
            raise MemberError(f"username: {username} is deactivated; a site administrator can reactivate it")
        try:
            with transaction.atomic():
                membership = Membership.objects.create(user=user, client=client, role=role)
        except IntegrityError:
            raise MemberError(f"username: {username} is already a member of {client.name}") from None
        _staff_if_admin(membership)
    return membership, password


def _staff_if_admin(membership: Membership) -> None:
    if membership.role == Role.ADMIN and not membership.user.is_staff:
        membership.user.is_staff = True
        membership.user.save(update_fields=["is_staff"])


def _lock_admins(client: Client) -> list[int]:
    """Ids of the client's admin memberships, locked until the transaction ends."""
    return list(Membership.objects.select_for_update().filter(client=client, role=Role.ADMIN)
                .order_by("pk").values_list("pk", flat=True))


def _refuse_last_admin(membership: Membership, admins: list[int], what: str) -> None:
    if admins == [membership.pk]:
        raise MemberError(f"role: {membership.user.username} is the only admin of "
                          f"{membership.client.name}; make someone else admin before you {what}")


def change_role(membership: Membership, role: str) -> Membership:
    role = _role(role)
    with transaction.atomic():
        admins = _lock_admins(membership.client)
        membership = Membership.objects.select_for_update().select_related("user", "client").get(pk=membership.pk)
        if membership.role == Role.ADMIN and role != Role.ADMIN:
            _refuse_last_admin(membership, admins, "demote them")
        membership.role = role
        membership.save(update_fields=["role"])
        _staff_if_admin(membership)
    return membership


def remove_member(membership: Membership) -> None:
    """Ends the user's access to the client; their labels and history stay (authored by them)."""
    with transaction.atomic():
        admins = _lock_admins(membership.client)
        membership = Membership.objects.select_for_update().select_related("user", "client").get(pk=membership.pk)
        if membership.role == Role.ADMIN:
            _refuse_last_admin(membership, admins, "remove them")
        # Their queue leases would hide assets from colleagues until they expire.
        Lease.objects.filter(user=membership.user, taxonomy__client=membership.client).delete()
        membership.delete()
