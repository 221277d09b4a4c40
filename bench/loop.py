"""Benchmark of the tagging loop on real photos, on the embedded default or the configured
database/broker: import img/s (with embedding), and the time from the N-th new label to the
retrained model being live, through a real Celery worker process.

    .venv/bin/python bench/loop.py [--data ../shared/datasets] [--n 20]

Runs in a fresh temporary TAGLOOP_VAR (SQLite + filesystem broker unless DATABASE_URL /
CELERY_BROKER_URL are set; with PostgreSQL, give a throwaway database).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--n", type=int, default=20, help="labels that trigger the retrain")
    ap.add_argument("--seed-per-class", type=int, default=5)
    args = ap.parse_args()
    var = Path(tempfile.mkdtemp(prefix="tagloop-bench-"))
    os.environ.setdefault("TAGLOOP_VAR", str(var))
    os.environ["TAGLOOP_SWEEP_SECONDS"] = "3600"  # measure the on-commit path, not the sweep
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tagloop.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from labeling.models import Client, Label, Tag, Taxonomy
    from labeling.services import importing, labels, queue, training

    call_command("migrate", verbosity=0)
    client = Client.objects.create(name="Bench", slug=f"bench-{int(time.time())}")
    tax = Taxonomy.objects.create(client=client, name="brand", retrain_threshold=args.n)
    tags = {b: Tag.objects.create(taxonomy=tax, name=b).pk for b in ("adidas", "converse", "nike")}
    shoes = Path(args.data) / "shoes"
    results: dict = {}

    t0 = time.monotonic()
    job = importing.import_paths(client, shoes / "train")
    dt = time.monotonic() - t0
    results["import_with_embedding_img_per_s"] = round(job.total / dt, 1)
    results["import_files"] = job.total
    print(f"import + thumbnails + embedding: {job.total} files in {dt:.1f}s = {job.total / dt:.1f} img/s")

    truth = {a.pk: a.original_name.split("/")[0] for a in client.assets.all()}
    for brand in tags:
        for pk in [p for p, b in sorted(truth.items()) if b == brand][: args.seed_per_class]:
            labels.save_label(tax, client.assets.get(pk=pk), [tags[brand]], source=Label.Source.IMPORTED)
    t0 = time.monotonic()
    training.train_now(tax, trigger="bench")
    results["train_and_rescore_s"] = round(time.monotonic() - t0, 2)
    print(f"first model (train + evaluate + rescore {job.total} assets) in {results['train_and_rescore_s']}s")

    from django.conf import settings
    from django.db import connection

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if connection.vendor == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{settings.DATABASES['default']['NAME']}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tagloop", "worker", "-Q", "default,import,train", "--pool", "solo",
         "--loglevel", "WARNING"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)  # worker start-up (imports torch) is not part of the loop latency
        todo = [i["asset"] for i in queue.review_batch(tax, limit=args.n)]
        for pk in todo:
            labels.save_label(tax, client.assets.get(pk=pk), [tags[truth[pk]]])
        t_label = time.monotonic()
        while time.monotonic() - t_label < 300:
            tax.refresh_from_db()
            if tax.live_model and tax.live_model.version == 2:
                break
            time.sleep(0.1)
        latency = time.monotonic() - t_label
    finally:
        worker.terminate()
        worker.wait(20)
    results["nth_label_to_live_s"] = round(latency, 2)
    results["live_version"] = tax.live_model.version if tax.live_model else None
    print(f"N={args.n}: {latency:.2f}s from the N-th label to model v2 live (worker on {settings.CELERY_BROKER_URL})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
