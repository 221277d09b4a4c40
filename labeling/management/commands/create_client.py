"""python manage.py create_client SLUG NAME --admin USERNAME [--email EMAIL]

The first step of a production install after createsuperuser: a client and its first admin
(made when there is no account of that name; the new password is printed once). From then on
that admin adds taxonomies, tags and members in the app and its admin pages.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from labeling.models import Client, Role
from labeling.services import members


class Command(BaseCommand):
    help = "Create a client (customer account) with its first admin."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="short name in URLs, e.g. acme")
        parser.add_argument("name", help="display name, e.g. 'Acme Corp'")
        parser.add_argument("--admin", required=True, metavar="USERNAME",
                            help="the client's first admin: an existing account, or one made now")
        parser.add_argument("--email", default="", help="the new admin's e-mail (a new account only)")

    def handle(self, *args, slug: str, name: str, admin: str, email: str, **options) -> None:
        client = Client(slug=slug, name=name)
        try:
            client.full_clean()  # slug format and uniqueness, name length: a clear message, not a traceback
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()))
        with transaction.atomic():
            client.save()
            try:
                membership, password = members.add_member(client, admin, Role.ADMIN, email=email)
            except members.MemberError as exc:
                transaction.set_rollback(True)
                raise CommandError(str(exc)) from None
        self.stdout.write(f"client '{client.slug}' ({client.name}) created; admin: {membership.user.get_username()}")
        if password:
            self.stdout.write(f"new account {membership.user.get_username()}, password (shown once): {password}")
