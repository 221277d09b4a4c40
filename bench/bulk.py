"""Benchmark of a bulk label action: the chunked write (labels.save_labels, what bulk actions
use) against one save_label per asset (how they were written before), on the same assets in
the same run, and how long a colleague's single label waits while a bulk action is running.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tagloop_bench .venv/bin/python bench/bulk.py [--n 1500]

Give a throwaway PostgreSQL database (row locks are what is measured; SQLite locks the whole
file). Asset rows only: no image files are needed for labels.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="assets in the bulk action")
    args = ap.parse_args()
    os.environ.setdefault("TAGLOOP_VAR", tempfile.mkdtemp(prefix="tagloop-bench-"))
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tagloop.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from labeling.models import Asset, Client, Tag, Taxonomy
    from labeling.services import labels

    call_command("migrate", verbosity=0)
    client = Client.objects.create(name="Bench", slug=f"bench-{int(time.time())}")
    tax = Taxonomy.objects.create(client=client, name="brand", retrain_threshold=10**6)
    tags = [Tag.objects.create(taxonomy=tax, name=n).pk for n in ("adidas", "converse", "nike")]
    assets = Asset.objects.bulk_create([
        Asset(client=client, original_name=f"a{i}.jpg", sha256=hashlib.sha256(f"{client.pk}-{i}".encode()).hexdigest(),
              byte_size=1, width=1, height=1, format="JPEG", file=f"bench/{i}.jpg")
        for i in range(args.n + 1)
    ])
    bulk, lone = assets[:-1], assets[-1]
    print(f"{connection.vendor}, {args.n} assets")

    def per_asset(tag: int) -> None:  # the old bulk path: one save_label each, in one transaction
        with transaction.atomic():
            for a in bulk:
                labels.save_label(tax, a, [tag], notify=False)

    def chunked(tag: int) -> None:
        labels.save_labels(tax, [(a, [tag]) for a in bulk], notify=False)

    results = {}
    for name, action, tag in (("one save_label per asset", per_asset, tags[0]), ("save_labels (chunked)", chunked, tags[1])):
        waited: list[float] = []

        def colleague() -> None:  # one label by someone else, a moment after the action started
            time.sleep(0.2)
            t0 = time.monotonic()
            labels.save_label(tax, lone, [tags[2]], notify=False)
            waited.append(time.monotonic() - t0)
            connection.close()

        other = threading.Thread(target=colleague)
        t0 = time.monotonic()
        other.start()
        action(tag)
        took = time.monotonic() - t0
        other.join()
        results[name] = (took, waited[0])
        print(f"{name:26} {took:6.2f} s for {args.n} labels; a colleague's single label waited {waited[0]:6.2f} s")
    (old_t, old_w), (new_t, new_w) = results.values()
    print(f"speed-up of the action: {old_t / new_t:.1f}x; the colleague's wait: {old_w:.2f} s -> {new_w:.2f} s")


if __name__ == "__main__":
    main()
