"""Create the demo client from ../shared/datasets: users, taxonomy, import, seed labels, model v1.

Idempotent: run it again and it only fills in what is missing (new passwords are printed
for the demo users each time, since stored ones cannot be read back).
"""
from __future__ import annotations

import os
import secrets
import time
from itertools import zip_longest
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from labeling.models import Client, Label, Membership, Role, Tag, Taxonomy
from labeling.services import importing, labels, training

BRANDS = ("adidas", "converse", "nike")
USERS = (("admin", Role.ADMIN), ("operator", Role.OPERATOR), ("viewer", Role.VIEWER))


class Command(BaseCommand):
    help = "Set up the shoes demo: client, users, taxonomy, import, seed labels, first model."

    def add_arguments(self, parser):
        default = Path(settings.BASE_DIR).parent / "shared" / "datasets"
        parser.add_argument("--data", default=str(default), help="datasets folder (default ../shared/datasets)")
        parser.add_argument(
            "--seed-per-class", type=int, default=25,
            help="seed labels per brand (about one in five is held out to evaluate the model)",
        )
        parser.add_argument("--threshold", type=int, default=10, help="retrain after this many new labels")
        parser.add_argument("--password", default=None, help="use this password for all demo users")

    def handle(self, *args, data: str, seed_per_class: int, threshold: int, password: str | None, **kw):
        shoes = Path(data) / "shoes"
        if not shoes.is_dir():
            raise CommandError(f"--data: no shoes folder at {shoes}")
        client, _ = Client.objects.get_or_create(slug="demo", defaults={"name": "Demo shoes"})
        creds = self._users(client, password)
        taxonomy, _ = Taxonomy.objects.get_or_create(
            client=client, name="shoe brand", defaults={"retrain_threshold": threshold}
        )
        for i, brand in enumerate(BRANDS):
            Tag.objects.get_or_create(taxonomy=taxonomy, name=brand, defaults={"position": i})

        if not client.assets.exists():
            for split in ("train", "test"):
                t0 = time.monotonic()
                job = importing.import_paths(client, shoes / split, user=None)
                dt = time.monotonic() - t0
                self.stdout.write(
                    f"imported {split}: {job.n_created} new, {job.n_duplicates} duplicates, "
                    f"{job.n_failed} failed in {dt:.1f}s ({job.total / max(dt, 1e-9):.1f} img/s incl. embedding)"
                )
        if not Label.objects.filter(taxonomy=taxonomy).exists():
            self._seed(client, taxonomy, shoes / "train", seed_per_class)
        if taxonomy.live_model_id is None:
            t0 = time.monotonic()
            run = training.train_now(taxonomy, trigger="demo")
            taxonomy.refresh_from_db()
            self.stdout.write(f"first model: run {run.state} in {time.monotonic() - t0:.1f}s, {run.message}")
        # tagloop.sh serves on $HOST:$PORT; say the address it will really answer on.
        url = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}/"
        self.stdout.write(self.style.SUCCESS(f"\nDemo ready. Log in at {url} as:"))
        for username, (pw, role) in creds.items():
            self.stdout.write(f"  {username:9} {pw:24} ({role})")

    def _users(self, client: Client, password: str | None) -> dict[str, tuple[str, str]]:
        User = get_user_model()
        creds = {}
        for username, role in USERS:
            user, _ = User.objects.get_or_create(username=username)
            pw = password or secrets.token_urlsafe(9)
            user.set_password(pw)
            user.is_staff = role == Role.ADMIN  # client admins edit taxonomies in Django admin
            user.save()
            Membership.objects.update_or_create(user=user, client=client, defaults={"role": role})
            creds[username] = (pw, role)
        return creds

    def _seed(self, client: Client, taxonomy: Taxonomy, train_dir: Path, per_class: int) -> None:
        """Label the first few training images of each brand, as a user's sorted folder would.
        Brands take turns: the dashboard replays labels in the order they were made, and a
        brand-by-brand seed would make v1's "your order vs random" curve look artificially bad."""
        tags = {t.name: t.pk for t in taxonomy.tags.all()}
        per_brand = []
        for brand in BRANDS:
            names = [p.name for p in sorted((train_dir / brand).glob("*.jpg"))[:per_class]]
            assets = client.assets.filter(original_name__in=[f"{brand}/{n}" for n in names]).order_by("pk")
            per_brand.append([(a, brand) for a in assets])
        n = 0
        for turn in zip_longest(*per_brand):
            for asset, brand in filter(None, turn):
                # no retrain check per label: the demo trains v1 itself next, and 80 checks
                # queued ahead of the first clustering kept the Clusters page empty for a minute
                labels.save_label(taxonomy, asset, [tags[brand]], source=Label.Source.IMPORTED, notify=False)
                n += 1
        self.stdout.write(f"seeded {n} labels ({per_class} per brand)")
