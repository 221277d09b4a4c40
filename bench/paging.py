"""Benchmark of the asset list API (keyset cursors, with its filters) and the review queue on
one client holding a million assets, on a real PostgreSQL, with OFFSET pages measured in the
same run as the baseline.

    .venv/bin/python bench/paging.py                 # 1M assets, writes bench/out/paging.json
    .venv/bin/python bench/paging.py --n 20000       # quick check (well under a minute)
    .venv/bin/python bench/paging.py --keep          # keep the database; --reuse runs on it again

The database named by --db (default $DATABASE_URL, else
postgres://postgres@127.0.0.1:5432/tagloop_bench_paging) is created, migrated, filled and
dropped at the end (unless --keep): give a throwaway name. A database that holds clients other
than this benchmark's is refused, never dropped.

Data: client "bench-paging" with N assets (fake file paths: list endpoints read no files, which
the run checks), a single-label taxonomy of 10 tags (Zipf-like use) plus one rare tag, an
operator with an API token, ~30 % of the assets labelled through the Label model's tables
(plus some older, non-current labels as history), a live model version whose Suggestion rows
score every asset (uncertainty skewed towards confident, is_labeled in step with the labels);
client "bench-paging-other" with a few assets of its own (same file hashes) to show scoping.
All rows come from INSERT ... SELECT generate_series, then VACUUM ANALYZE.

Measured in-process through DRF's test client (token auth, the real URLconf, serializers and
SQL; no HTTP socket; one kept database connection, as with DB_CONN_MAX_AGE > 0): each list
variant's first page, the page after following the cursor --walk times, and pages reached by
cursors made at --jumps of the depth (the cursor is base64 JSON of the last row's sort key, so
it can be made for any row), p50/p95 over --repeats, with the time of the page's own SQL query.
Several depths, because the planner picks different joins at different cursor values: a plan
that is fast at 99 % can read half the table at 50 %. Baseline: the same page by OFFSET
through a plain ORM query at the same depth (Asset.objects.filter(client=...).order_by("pk")
[off:off + page], and for the uncertainty orders the live model's Suggestion rows by (-uncertainty, id), with
their assets).
The review queue: the API's /queue/ and the review page's queue.json (which also returns the
header status the page polls). EXPLAIN (ANALYZE, BUFFERS) of each list query at its slowest
point, of the deepest OFFSET, and of each queue endpoint's queue query and slowest query:
index or seq scan, rows read, buffers; page queries over --slow-ms are flagged SLOW.

On 2 busy cores: --n 20000 takes 40-60 s, the 1M default about 5 minutes (70 s of it filling).
The database and its data: bench/_paging_fill.py; timing and EXPLAIN: bench/_paging_measure.py.
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
from urllib.parse import urlparse

# The helpers sit beside this file: bench/ is no package, and `python bench/paging.py` puts
# bench/ first on sys.path.
from _paging_fill import (DEFAULT_DB, OTHER_SLUG, SLUG, create_world, describe_db, drop_db, holds_world,
                          load_world, prepare_db)
from _paging_measure import (Measurer, Probe, cursor_at, explain, explain_line, forbid_media_reads, public,
                             queue_query, rows_of)

REPO = Path(__file__).resolve().parent.parent
# The OFFSET baselines: their name -> the list variant whose points give the depths.
OFFSET_BASELINES = {"id": "all", "uncertain+unlabeled": "uncertain+unlabeled", "uncertain (all)": "uncertain (all)"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="assets of the big client")
    ap.add_argument("--other-n", type=int, default=20, help="assets of the second client")
    ap.add_argument("--page", type=int, default=50, help="page size (?limit=)")
    ap.add_argument("--walk", type=int, default=50, help="pages followed by cursor before the 'deep' page")
    ap.add_argument("--jumps", default="0.5,0.99",
                    help="depths (fractions of the order) of the made-up cursors, comma-separated")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--label-frac", type=float, default=0.30)
    ap.add_argument("--rare-frac", type=float, default=0.0005, help="share of labels carrying the rare tag")
    ap.add_argument("--slow-ms", type=float, default=50.0, help="flag page queries slower than this (p50)")
    ap.add_argument("--db", default=os.environ.get("DATABASE_URL") or DEFAULT_DB)
    ap.add_argument("--keep", action="store_true", help="keep the database at the end")
    ap.add_argument("--reuse", action="store_true", help="run on a kept database of the same --n")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "paging.json"))
    args = ap.parse_args()
    args.jumps = [float(f) for f in args.jumps.split(",") if f.strip()]
    if not args.db.startswith(("postgres://", "postgresql://")):
        sys.exit("--db must be a PostgreSQL URL")
    return args


def setup_django(db: str) -> None:
    os.environ["DATABASE_URL"] = db
    os.environ.setdefault("TAGLOOP_VAR", tempfile.mkdtemp(prefix="tagloop-bench-paging-"))
    # one connection for the run (CONN_MAX_AGE 0 would reconnect per request: a constant
    # ~2-5 ms that has nothing to do with page depth)
    os.environ.setdefault("DB_CONN_MAX_AGE", "600")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tagloop.settings")
    sys.path.insert(0, str(REPO))
    import logging

    import django

    django.setup()
    logging.getLogger("django.request").setLevel(logging.ERROR)  # the scoping check's 404 is expected


def git_state() -> dict:
    """The code measured: HEAD and the files changed beside it (bench/ aside)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "changed": changed}


def fill_or_reuse(args: argparse.Namespace, existed: bool) -> dict | None:
    """Fills the new database; returns the fill's timings, or None when --reuse found the data."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if existed and holds_world(args.n):
        print(f"reusing {args.n:,} assets in {urlparse(args.db).path[1:]}", flush=True)
        return None
    if existed:
        args.keep = True  # not this run's to drop
        sys.exit("--reuse: the kept database does not hold --n assets; run without --reuse")
    print(f"filling {args.n:,} assets (+{args.other_n} in a second client)...", flush=True)
    t = time.perf_counter()
    fill = create_world(args.n, args.other_n, args.label_frac, args.rare_frac)
    fill["total_s"] = round(time.perf_counter() - t, 1)
    print(f"  filled in {fill['total_s']}s", flush=True)
    return fill


def orders(w: dict) -> dict:
    """The list's sort orders as ORM queries (cursors at any depth are read off them; the OFFSET
    baseline slices them): assets by id, and the live model's suggestions by uncertainty,
    unlabeled or all."""
    from labeling.models import Asset, Suggestion

    mv = w["tax"].live_model_id
    by_uncertainty = Suggestion.objects.filter(model_version_id=mv).order_by("-uncertainty", "pk")
    return {"id": Asset.objects.filter(client=w["client"]).order_by("pk"),
            "unl": by_uncertainty.filter(is_labeled=False), "every": by_uncertainty}


def variants(w: dict) -> list[tuple[str, dict, str]]:
    """The list variants measured: (name, query parameters, order)."""
    t = w["tax"].pk
    return [
        ("all", {}, "id"),
        ("all+taxonomy", {"taxonomy": t}, "id"),
        ("labeled", {"taxonomy": t, "state": "labeled"}, "id"),
        ("unlabeled", {"taxonomy": t, "state": "unlabeled"}, "id"),
        ("tag (common)", {"taxonomy": t, "tag": w["tags"][0]}, "id"),
        ("tag (rare)", {"taxonomy": t, "tag": w["rare"]}, "id"),
        ("uncertainty>=0.9", {"taxonomy": t, "uncertainty_min": 0.9}, "id"),
        ("uncertain+unlabeled", {"taxonomy": t, "order": "uncertain", "state": "unlabeled"}, "unl"),
        ("uncertain (all)", {"taxonomy": t, "order": "uncertain"}, "every"),
    ]


def measure_lists(m: Measurer, api, w: dict, by: dict, fractions: list[float]) -> tuple[dict, dict, dict]:
    """Every list variant at every point, then the OFFSET baselines at the same depths."""
    url = f"/api/v1/clients/{SLUG}/assets/"
    jumps = {}
    for kind, qs in by.items():
        total = qs.count()
        jumps[kind] = {f"@{f:.0%}": (int(f * total), cursor_at(qs, int(f * total))) for f in fractions}
    lists, offsets, explains, kinds = {}, {}, {}, {}
    for name, params, kind in variants(w):
        kinds[name] = kind
        entry, explains[name] = m.variant(api, url, params, jumps[kind])
        lists[name] = {"params": params, "order": "id" if kind == "id" else "uncertainty", **entry}
        print(f"  {name:20s} " + "  ".join(f"{label} {p['p50_ms']:.1f}" for label, p in entry["points"].items())
              + f" ms; EXPLAIN at {explains[name]['at']}: {explain_line(explains[name])}", flush=True)
    for order, name in OFFSET_BASELINES.items():
        qs = by[kinds[name]]
        if kinds[name] != "id":
            qs = qs.select_related("asset")  # the API's uncertainty pages return the assets too
        offsets[order], explains[f"OFFSET {order}"] = m.offset(lambda off: qs[off:off + m.page],
                                                               lists[name]["points"])
        print(f"  offset {order}: " + ", ".join(f"{x['depth_rows']:,}: {x['offset_sql_p50_ms']} ms"
                                               for x in offsets[order]), flush=True)
    return lists, offsets, explains


def measure_queue(m: Measurer, api, w: dict, unlabeled) -> tuple[dict, bool, dict]:
    """The API's /queue/ and the review page's queue.json (which also returns the header status
    the page polls); and whether the most uncertain unlabeled asset comes first (no planned
    queue_rank in this data, so the queue's order is the uncertainty's)."""
    from django.test import Client as PageClient

    pages = PageClient()
    pages.force_login(w["user"])
    t = w["tax"].pk
    qurl, rurl = f"/api/v1/clients/{SLUG}/taxonomies/{t}/queue/", f"/c/{SLUG}/t/{t}/queue.json"
    first_ids = [i["asset"] for i in m.probe.get(api, qurl, {"limit": 10})[0].json()]
    queue, explains = {}, {}
    for name, http, u, params in [
        ("api queue (limit 10)", api, qurl, {"limit": 10}),
        ("review queue.json (limit 5)", pages, rurl, {"order": "uncertain", "limit": 5,
                                                      "exclude": ",".join(map(str, first_ids[:5]))}),
        ("review queue.json confident", pages, rurl, {"order": "confident", "limit": 5}),
    ]:
        q = m.measure(http, u, params, queue_query)
        items = rows_of(q["_body"])
        queue[name] = {**public(q), "top_uncertainty": items[0]["uncertainty"] if items else None}
        explains[name] = explain(q["_main"])
        if q["_slowest"][0] != q["_main"][0]:
            explains[name + " (slowest query)"] = explain(q["_slowest"])
        print(f"  {name:28s} {q['p50_ms']:7.1f} ms p50, {q['queries']} queries, slowest "
              f"{q['slowest_sql']['ms']:.1f} ms: {q['slowest_sql']['sql'][:70]}", flush=True)
    top = unlabeled.values_list("uncertainty", flat=True).first()
    return queue, abs(queue["api queue (limit 10)"]["top_uncertainty"] - round(top, 4)) < 1e-4, explains


def measure_scoping(m: Measurer, api, w: dict, assets_by_id) -> tuple[dict, dict]:
    """The second client sees its own assets only, the first cannot list the second's, and the
    first's last pages hold exactly its last assets."""
    from rest_framework.test import APIClient

    from labeling.api.base import encode_cursor
    from labeling.models import Asset

    other_api = APIClient()
    other_api.credentials(HTTP_AUTHORIZATION=f"Token {w['other_token'].key}")
    other_ids = set(Asset.objects.filter(client=w["other"]).values_list("pk", flat=True))
    other_url = f"/api/v1/clients/{OTHER_SLUG}/assets/"
    first = m.measure(other_api, other_url, {"limit": m.page})
    got = {a["id"] for a in first["_body"]["results"]}
    m.probe.get(api, other_url, {"limit": m.page}, status=404)  # raises on any other status
    tail = list(assets_by_id.values_list("pk", flat=True)[w["n"] - 3 * m.page - 1:])
    cursor, seen_ids = encode_cursor({"id": tail[0]}), []
    while cursor:
        body = m.probe.get(api, f"/api/v1/clients/{SLUG}/assets/", {"limit": m.page, "cursor": cursor})[0].json()
        seen_ids += [a["id"] for a in body["results"]]
        cursor = body["next_cursor"]
    return {
        "other_first_page": public(first) | {"ids_all_other_client": got <= other_ids,
                                             "count": len(got), "expected": min(len(other_ids), m.page)},
        "cross_client_is_404": True,
        "tail_of_big_client_exact": seen_ids == tail[1:] and not (set(seen_ids) & other_ids),
    }, explain(first["_main"])


def main() -> None:
    args = parse_args()
    existed = prepare_db(args.db, args.reuse)
    setup_django(args.db)
    from rest_framework.test import APIClient

    result: dict = {"cpu_count": os.cpu_count(), "git": git_state()}
    ok = False
    try:
        fill = fill_or_reuse(args, existed)
        w = load_world()
        server, sizes = describe_db()
        result.update({
            **server, "n": w["n"], "other_n": w["other_n"], "labelled": w["labelled"], "history_labels": w["history"],
            "current_labels_by_tag": w["current_labels_by_tag"], "table_mb": sizes, "fill": fill,
            "page": args.page, "walk": args.walk, "jumps": args.jumps, "repeats": args.repeats,
            "conn_max_age": os.environ["DB_CONN_MAX_AGE"],
            "name_search": "not offered by GET /api/v1/clients/<slug>/assets/ (filters: taxonomy, tag, state, "
                           "uncertainty_min/max, cluster, order)",
        })
        print(f"{w['n']:,} assets, {w['labelled']:,} labelled (+{w['history']:,} history), "
              f"tables (MB) {sizes}", flush=True)

        media = forbid_media_reads()
        m = Measurer(Probe(), args.repeats, args.page, args.walk)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {w['token'].key}")
        by = orders(w)
        lists, offsets, explains = measure_lists(m, api, w, by, args.jumps)
        queue, queue_order_ok, queue_explains = measure_queue(m, api, w, by["unl"])
        explains |= queue_explains
        scoping, explains["other client first page"] = measure_scoping(m, api, w, by["id"])
        result.update({"list": lists, "offset_baseline": offsets, "queue": queue,
                       "queue_most_uncertain_first": queue_order_ok, "scoping": scoping,
                       "media_file_accesses": media["count"], "media_file_access_examples": media["what"],
                       "explain": explains})
        report(result, args.slow_ms)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.out}")
        ok = True
    finally:
        if args.keep:
            print(f"kept database {urlparse(args.db).path[1:]} (--reuse runs on it again)")
        else:
            drop_db(args.db)
            print(f"dropped database {urlparse(args.db).path[1:]}")
        if not ok:
            print("run failed; see the traceback above", file=sys.stderr)


def report(r: dict, slow_ms: float) -> None:
    """The tables on stdout (the JSON holds the same and more)."""
    labels = ["first", f"page {r['walk'] + 1}"] + [f"@{f:.0%}" for f in r["jumps"]]
    print(f"\n=== asset list API, {r['n']:,} assets in one client, page {r['page']}, PostgreSQL {r['postgres']} "
          f"(shared_buffers {r['shared_buffers']}) ===")
    print(f"whole request in-process, p50 / p95 ms; 'page {r['walk'] + 1}' = after following the cursor {r['walk']} "
          f"times, '@x%' = a cursor made at that depth of the order ({r['repeats']} repeats, fewer when > 1 s)")
    head = f"{'variant':21s}" + "".join(f"{h:>17s}" for h in labels) + "  q/req"
    print(head)
    print("-" * len(head))
    for name, x in r["list"].items():
        cells = [x["points"].get(h) for h in labels]
        print(f"{name:21s}" + "".join(f"{m['p50_ms']:8.1f} /{m['p95_ms']:7.1f}" if m else f"{'-':>17s}" for m in cells)
              + f"  {x['points']['first']['queries']:>5d}")
    print("\npage query alone (the SQL asking for page + 1 rows), p50 ms; EXPLAIN at the slowest point")
    head = f"{'variant':21s}" + "".join(f"{h:>10s}" for h in labels) + "   plan at the slowest point"
    print(head)
    print("-" * len(head))
    for name, x in r["list"].items():
        cells = [x["points"].get(h) for h in labels]
        worst = max(m["main_sql_p50_ms"] for m in cells if m)
        e = r["explain"][name]
        plan = f"{e['at']}: {', '.join(e['indexes']) or '-'}" + (f"; SEQ SCAN {', '.join(e['seq_scans'])}"
                                                                 if e["seq_scans"] else "")
        print(f"{name:21s}" + "".join(f"{m['main_sql_p50_ms']:10.1f}" if m else f"{'-':>10s}" for m in cells)
              + f"   {plan}" + ("   SLOW" if worst > slow_ms else ""))
    print("\n=== keyset vs OFFSET at the same depth (page query SQL, p50 ms) ===")
    print(f"{'order':21s} {'point':>9s} {'depth':>10s} {'keyset':>9s} {'offset':>9s} {'offset/keyset':>14s} {'API keyset':>11s}")
    for order, rows in r["offset_baseline"].items():
        for x in rows:
            ratio = f"{x['offset_over_keyset_sql']:.1f}x" if x["offset_over_keyset_sql"] else "-"
            print(f"{order:21s} {x['point']:>9s} {x['depth_rows']:>10,} {x['keyset_sql_p50_ms']:9.2f} "
                  f"{x['offset_sql_p50_ms']:9.2f} {ratio:>14s} {x['keyset_api_p50_ms']:11.1f}")
    print("\n=== review queue (operator token / session; leases written each call) ===")
    for name, q in r["queue"].items():
        print(f"{name:30s} p50 {q['p50_ms']:7.1f}  p95 {q['p95_ms']:7.1f} ms, queue SQL {q['main_sql_p50_ms']:.1f} ms, "
              f"{q['queries']} queries; slowest {q['slowest_sql']['ms']:.1f} ms: {q['slowest_sql']['sql'][:60]}")
    print(f"most uncertain unlabeled first: {r['queue_most_uncertain_first']}")
    s = r["scoping"]
    o = s["other_first_page"]
    print(f"\nscoping: other client's page {o['count']}/{o['expected']} own assets only={o['ids_all_other_client']}, "
          f"p50 {o['p50_ms']:.1f} ms; cross-client 404={s['cross_client_is_404']}; big client's tail exact="
          f"{s['tail_of_big_client_exact']}; media files touched by list/queue requests: {r['media_file_accesses']}")
    print("\n=== EXPLAIN (ANALYZE, BUFFERS): list page queries at their slowest point; OFFSET at the deepest; queue ===")
    for name, e in r["explain"].items():
        print(f"{name + (' @ ' + e['at'] if e.get('at') else ''):36s} {explain_line(e)}")
    always = {"all", "uncertain+unlabeled", "api queue (limit 10)"}
    for name, e in r["explain"].items():
        if name in always or (e["execution_ms"] > slow_ms and not name.startswith("OFFSET")):
            print(f"\n-- {name}" + (f" @ {e['at']}" if e.get("at") else "") + ":")
            print("\n".join("   " + line for line in e["tree"]))


if __name__ == "__main__":
    main()
