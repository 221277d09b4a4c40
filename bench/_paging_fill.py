"""The database of bench/paging.py: creating it (and refusing one it did not make), filling it
with INSERT ... SELECT generate_series, reading back what it holds, dropping it.

Importable before django.setup() (prepare_db runs before the settings know the database); the
functions that use the ORM import it when called.
"""
from __future__ import annotations

import re
import sys
import time
from urllib.parse import urlparse

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/tagloop_bench_paging"
SLUG, OTHER_SLUG = "bench-paging", "bench-paging-other"
N_TAGS = 10  # regular tags; plus one rare tag
BACKBONE = "efficientnet-lite0"
TABLES = ("labeling_asset", "labeling_suggestion", "labeling_label", "labeling_label_tags")


# --- the database: create, refuse a foreign one, drop ---------------------------------------------


def _admin(url: str):
    """An autocommit connection to the server's maintenance database (CREATE/DROP DATABASE
    cannot run inside the target itself or in a transaction), and the target's name."""
    import psycopg

    p = urlparse(url)
    return psycopg.connect(p._replace(path="/postgres").geturl(), autocommit=True), p.path.lstrip("/")


def _is_bench_db(url: str) -> bool:
    """True for an empty database or one this benchmark filled (its clients and no others)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('labeling_client')").fetchone()[0] is None:
            return conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()[0] == 0
        slugs = {row[0] for row in conn.execute("SELECT slug FROM labeling_client")}
        return SLUG in slugs and slugs <= {SLUG, OTHER_SLUG}


def prepare_db(url: str, reuse: bool) -> bool:
    """Creates the database; returns True when it already existed and --reuse keeps it."""
    from psycopg import sql

    conn, name = _admin(url)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None
        if exists and not _is_bench_db(url):
            sys.exit(f"{name} exists and is not one this benchmark made: refusing to use or drop it")
        if exists and reuse:
            return True
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return False


def drop_db(url: str) -> None:
    from django.db import connections
    from psycopg import sql

    connections.close_all()
    conn, name = _admin(url)
    with conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- the data --------------------------------------------------------------------------------------
# Each INSERT names the columns it sets; {xc}/{xv} receive the model's other defaulted columns
# (with_defaults), so a field added later with a default (Suggestion.queue_rank) is filled too.

ASSETS_SQL = """
INSERT INTO labeling_asset (client_id, import_job_id, file, thumbnail, original_name, sha256, byte_size,
                            width, height, format, phash, embedded_with, created{xc})
SELECT %(c)s, NULL,
       'assets/' || %(c)s || '/' || left(h, 2) || '/' || h || '.jpg',
       'thumbs/' || %(c)s || '/' || left(h, 2) || '/' || h || '.jpg',
       'shoot-' || lpad((g / 500)::text, 4, '0') || '/IMG_' || lpad(g::text, 7, '0') || '.JPG',
       h, 150000 + ('x' || substr(h, 3, 5))::bit(20)::int * 4,
       (ARRAY[4000, 3000, 1920, 1080])[1 + g %% 4], (ARRAY[3000, 4000, 1080, 1920])[1 + g %% 4], 'JPEG',
       ('x' || substr(h, 9, 16))::bit(64)::bigint, %(backbone)s,
       now() - make_interval(secs => (%(n)s - g) * 10){xv}
FROM (SELECT g, encode(sha256(convert_to('bench-' || g, 'UTF8')), 'hex') AS h
      FROM generate_series(1, %(n)s) AS g) s
ORDER BY g
"""

LABELS_SQL = """
INSERT INTO labeling_label (asset_id, taxonomy_id, user_id, source, suggestion_id, batch_id, is_current, created{xc})
SELECT a.id, %(t)s, %(u)s, (ARRAY['accepted', 'corrected', 'manual'])[1 + floor(random() * 3)::int],
       NULL, NULL, TRUE, a.created + interval '2 days'{xv}
FROM labeling_asset a WHERE a.client_id = %(c)s AND random() < %(frac)s
ORDER BY a.id
"""

# Older labels of some labelled assets: history rows (is_current false), as relabelling leaves.
HISTORY_SQL = """
INSERT INTO labeling_label (asset_id, taxonomy_id, user_id, source, suggestion_id, batch_id, is_current, created{xc})
SELECT asset_id, taxonomy_id, user_id, 'manual', NULL, NULL, FALSE, created - interval '1 day'{xv}
FROM labeling_label WHERE taxonomy_id = %(t)s AND is_current AND random() < 0.1
"""

# One tag per label (single-label taxonomy): Zipf-like over the regular tags, a rare one now and then.
LABEL_TAGS_SQL = """
INSERT INTO labeling_label_tags (label_id, tag_id{xc})
SELECT l.id, CASE WHEN random() < %(rare_frac)s THEN %(rare)s
                  ELSE (%(tags)s::bigint[])[1 + floor(%(k)s * power(random(), 2))::int] END{xv}
FROM labeling_label l WHERE l.taxonomy_id = %(t)s
"""

# The live model's row for every asset: top-1 probability p from the uncertainty u
# (u = 1: uniform over the m outputs), the rest spread evenly; is_labeled follows the labels.
SUGGESTIONS_SQL = """
INSERT INTO labeling_suggestion (asset_id, taxonomy_id, model_version_id, probs, top1_tag_id, top1_prob, margin,
                                 entropy, uncertainty, is_labeled{xc})
SELECT id, %(t)s, %(mv)s,
       to_jsonb(ARRAY(SELECT round((CASE WHEN i = k THEN p ELSE (1 - p) / (%(m)s - 1) END)::numeric, 4)
                      FROM generate_series(0, %(m)s - 1) AS i)),
       (%(model_tags)s::bigint[])[k + 1], p, p - (1 - p) / (%(m)s - 1),
       -(p * ln(p) + (1 - p) * ln((1 - p) / (%(m)s - 1))) / ln(%(m)s), u, labeled{xv}
FROM (SELECT id, u, 1 - (1 - 1.0 / %(m)s) * u AS p, k, labeled
      FROM (SELECT a.id, (0.001 + 0.998 * power(random(), 1.5))::float8 AS u,
                   floor(random() * %(m)s)::int AS k, l.id IS NOT NULL AS labeled
            FROM labeling_asset a
            LEFT JOIN labeling_label l ON l.asset_id = a.id AND l.taxonomy_id = %(t)s AND l.is_current
            WHERE a.client_id = %(c)s) r) s
ORDER BY id
"""


def with_defaults(template: str, model) -> tuple[str, dict]:
    """The INSERT with the model's other defaulted columns added: Django fills a field's
    default in Python, not in the database, so a column added later (with a default) would
    otherwise be NULL here."""
    from django.db import connection

    named = set(re.search(r"INSERT INTO \w+ \(([^)]*)\{xc\}\)", template).group(1).replace(" ", "").replace("\n", "")
                .split(","))
    cols, vals, params = "", "", {}
    for f in model._meta.concrete_fields:
        if f.column in named or f.primary_key or not f.has_default():
            continue
        cols += f", {f.column}"
        vals += f", %(default_{f.column})s"
        params[f"default_{f.column}"] = f.get_db_prep_save(f.get_default(), connection)
    return template.format(xc=cols, xv=vals), params


def _create_accounts():
    """Clients, operators with API tokens, taxonomies, tags and the live model version, the ORM
    way (as tests/conftest.py): a few rows, where the model's own logic should apply."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from labeling.models import Client, Membership, ModelVersion, Role, Tag, Taxonomy

    client = Client.objects.create(name="Bench paging", slug=SLUG)
    other = Client.objects.create(name="Bench paging (other)", slug=OTHER_SLUG)
    op = get_user_model().objects.create_user("bench-operator")  # no password: the API uses the token
    other_op = get_user_model().objects.create_user("bench-other-operator")
    for user, c in ((op, client), (other_op, other)):
        Membership.objects.create(user=user, client=c, role=Role.OPERATOR)
        Token.objects.create(user=user)
    tax = Taxonomy.objects.create(client=client, name="brand", retrain_threshold=50)
    tags = [Tag.objects.create(taxonomy=tax, name=f"brand-{i:02d}", position=i).pk for i in range(N_TAGS)]
    rare = Tag.objects.create(taxonomy=tax, name="rare-brand", position=N_TAGS).pk
    other_tax = Taxonomy.objects.create(client=other, name="brand")
    Tag.objects.create(taxonomy=other_tax, name="brand-00")
    mv = ModelVersion.objects.create(taxonomy=tax, version=1, backbone=BACKBONE, artifact="bench/none.pt",
                                     tag_ids=tags + [rare], metrics={"accuracy": 0.8})
    tax.live_model = mv
    tax.save(update_fields=["live_model"])
    return client, other, op, tax, tags, rare, mv


def create_world(n: int, other_n: int, label_frac: float, rare_frac: float) -> dict:
    """Accounts by the ORM, the bulk rows by SQL, then VACUUM ANALYZE; returns each step's
    seconds (the assets of both clients add up in assets_s)."""
    from django.db import connection, transaction

    from labeling.models import Asset, Label, Suggestion

    timings: dict[str, float] = {}
    with transaction.atomic():
        client, other, op, tax, tags, rare, mv = _create_accounts()
        steps = [("assets_s", ASSETS_SQL, Asset, {"c": c, "n": count, "backbone": BACKBONE})
                 for c, count in ((client.pk, n), (other.pk, other_n))]
        steps += [
            ("labels_s", LABELS_SQL, Label, {"t": tax.pk, "u": op.pk, "c": client.pk, "frac": label_frac}),
            ("history_s", HISTORY_SQL, Label, {"t": tax.pk}),
            ("label_tags_s", LABEL_TAGS_SQL, Label.tags.through,
             {"t": tax.pk, "rare_frac": rare_frac, "rare": rare, "tags": tags, "k": N_TAGS}),
            ("suggestions_s", SUGGESTIONS_SQL, Suggestion,
             {"t": tax.pk, "mv": mv.pk, "m": N_TAGS + 1, "model_tags": tags + [rare], "c": client.pk}),
        ]
        with connection.cursor() as cur:
            for key, template, model, params in steps:
                sql, defaults = with_defaults(template, model)
                t = time.perf_counter()
                cur.execute(sql, {**params, **defaults})
                dt = time.perf_counter() - t
                timings[key] = timings.get(key, 0.0) + dt
                print(f"  {key[:-2]}: {cur.rowcount:,} rows in {dt:.1f}s", flush=True)
    t = time.perf_counter()
    with connection.cursor() as cur:
        for table in TABLES:
            cur.execute(f"VACUUM ANALYZE {table}")
    timings["vacuum_analyze_s"] = time.perf_counter() - t
    return {k: round(v, 1) for k, v in timings.items()}


def holds_world(n: int) -> bool:
    """Whether a kept database holds this benchmark's client with n assets (--reuse)."""
    from labeling.models import Asset

    return Asset.objects.filter(client__slug=SLUG).count() == n


def load_world() -> dict:
    """The accounts and the counts of what the database holds, for a new or a reused fill."""
    from django.db.models import Count
    from rest_framework.authtoken.models import Token

    from labeling.models import Asset, Client, Label, Tag, Taxonomy

    client = Client.objects.get(slug=SLUG)
    other = Client.objects.get(slug=OTHER_SLUG)
    tax = Taxonomy.objects.select_related("live_model").get(client=client, name="brand")
    tags = list(Tag.objects.filter(taxonomy=tax).order_by("position").values_list("pk", flat=True))
    token = Token.objects.get(user__memberships__client=client)
    other_token = Token.objects.get(user__memberships__client=other)
    by_tag = dict(Label.tags.through.objects.filter(label__taxonomy=tax, label__is_current=True)
                  .values_list("tag_id").annotate(n=Count("id")))
    return {
        "client": client, "other": other, "tax": tax, "tags": tags[:N_TAGS], "rare": tags[N_TAGS],
        "token": token, "other_token": other_token, "user": token.user,
        "n": Asset.objects.filter(client=client).count(), "other_n": Asset.objects.filter(client=other).count(),
        "labelled": Label.objects.filter(taxonomy=tax, is_current=True).count(),
        "history": Label.objects.filter(taxonomy=tax, is_current=False).count(),
        "current_labels_by_tag": {str(k): v for k, v in sorted(by_tag.items())},
    }


def describe_db() -> tuple[dict, dict]:
    """The server's version and the settings that decide whether pages come from memory; and
    each table's size with its indexes (MB)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT current_setting('server_version'), current_setting('shared_buffers'), "
                    "current_setting('work_mem'), current_setting('jit')")
        version, shared_buffers, work_mem, jit = cur.fetchone()
        sizes = {}
        for table in TABLES:
            cur.execute("SELECT pg_total_relation_size(%s)", [table])
            sizes[table] = round(cur.fetchone()[0] / 1e6, 1)
    return {"postgres": version, "shared_buffers": shared_buffers, "work_mem": work_mem, "jit": jit}, sizes
