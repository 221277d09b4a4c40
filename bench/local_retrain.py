"""What a taxonomy's *local matching* buys and costs in the product: FlickrLogos imported into a
fresh embedded-default instance (SQLite, a temporary var folder), fold 0 of fl27-28way's
training photos labeled (28 tags: 27 brands + none), its test photos left unlabeled; then the
product's own retrain (services.training.train_now) without matching, with it on a cold
keypoint cache, and again warm, in one run.

    .venv/bin/python bench/local_retrain.py [--n N]

Prints each retrain's seconds (and the ratio to the retrain without matching), the held-out
accuracy it reported, and the share of the unlabeled test photos whose stored top suggestion
is right.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=0, help="only every k-th photo so that about N are used (0: all)")
    ap.add_argument("--data", default=None, help="datasets folder (default ../shared/datasets)")
    args = ap.parse_args()
    var = Path(tempfile.mkdtemp(prefix="tagloop-bench-"))
    os.environ.update(TAGLOOP_VAR=str(var), DJANGO_SETTINGS_MODULE="tagloop.settings")
    os.environ.pop("DATABASE_URL", None)  # the embedded default, in the temporary folder
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    from labeling.models import Client, Label, Suggestion, Tag, Taxonomy
    from labeling.services import importing, labels, training
    from ml.datasets import load_task

    call_command("migrate", verbosity=0)
    task = load_task("fl27-28way", args.data)
    train, test = task.splits[0]
    step = max(1, len(task.y) // args.n) if args.n else 1
    train, test = train[::step], test[::step]
    folder = var / "library"
    folder.mkdir()
    for i in [*train, *test]:
        (folder / f"{i:05d}-{Path(task.paths[i]).name}").symlink_to(Path(task.paths[i]).resolve())
    client = Client.objects.create(name="Bench", slug="bench")
    tax = Taxonomy.objects.create(client=client, name="logo", retrain_threshold=10**6)
    tags = [Tag.objects.create(taxonomy=tax, name=n, position=k).pk for k, n in enumerate(task.labels)]
    t = time.perf_counter()
    job = importing.import_paths(client, folder)
    print(f"import of {job.n_created} photos (thumbnails + CNN vectors): {time.perf_counter() - t:.1f} s")
    assets = {int(a.original_name[:5]): a for a in client.assets.all()}
    for i in train:
        if i in assets:
            labels.save_label(tax, assets[i], [tags[task.y[i]]], source=Label.Source.IMPORTED)
    unlabeled = {assets[i].pk: tags[task.y[i]] for i in test if i in assets}
    print(f"{len(train)} labeled, {len(unlabeled)} unlabeled test photos, {len(tags)} tags; 2-core CPU\n")
    print("| retrain | state | seconds | vs without | held-out acc | unlabeled photos right | matching weight |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for name, on in (("without matching", False), ("matching, cold keypoint cache", True),
                     ("matching, warm cache", True)):
        Taxonomy.objects.filter(pk=tax.pk).update(local_matching=on)
        tax.refresh_from_db()
        t = time.perf_counter()
        run = training.train_now(tax)
        dt = time.perf_counter() - t
        base = base or dt
        rows = Suggestion.objects.filter(model_version=run.model_version, asset_id__in=list(unlabeled))
        right = sum(s.top1_tag_id == unlabeled[s.asset_id] for s in rows) / max(1, len(unlabeled))
        weight = (run.metrics.get("local") or {}).get("weight", "-")
        print(f"| {name} | {run.state} | {dt:.1f} | {dt / base:.2f}x | {run.metrics.get('accuracy', float('nan')):.3f} "
              f"| {right:.3f} | {weight} |")


if __name__ == "__main__":
    main()
