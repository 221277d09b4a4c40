"""Measuring for bench/paging.py: requests sent in-process with each one's SQL logged and timed,
p50/p95 over repeats, one list variant's pages (first, after a cursor walk, at made-up cursors),
the same depths by OFFSET, and EXPLAIN (ANALYZE, BUFFERS) summaries.

Importable before django.setup(); what needs the app is imported when called.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from django.db import connection

Query = tuple[str, Any, float]  # (sql, params, ms) of one logged query
Pick = Callable[[list[Query]], Query | None]  # a request's main query, out of its log
SLOW_REQUEST_MS = 1000  # a request this slow is measured 4 times at most, to keep runs short


class Probe:
    """Runs a callable with every SQL query it sends logged as (sql, params, ms)."""

    def __init__(self) -> None:
        self.log: list[Query] = []

    def __call__(self, execute, sql, params, many, context):
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.log.append((sql, params, (time.perf_counter() - t) * 1000))

    def run(self, fn: Callable[[], Any]) -> tuple[Any, float, list[Query]]:
        self.log = []
        t = time.perf_counter()
        with connection.execute_wrapper(self):
            value = fn()
        return value, (time.perf_counter() - t) * 1000, list(self.log)

    def repeat(self, fn: Callable[[], Any], repeats: int) -> list[tuple[Any, float, list[Query]]]:
        """One warm-up call (plans, caches), then ``repeats`` measured ones, fewer for slow calls:
        a few are enough to say that it is slow."""
        self.run(fn)
        runs = []
        while len(runs) < repeats:
            runs.append(self.run(fn))
            if runs[-1][1] > SLOW_REQUEST_MS:
                repeats = min(repeats, 4)
        return runs

    def get(self, http, url: str, params: dict | None = None, status: int = 200):
        return self.run(lambda: request(http, url, params, status))


def request(http, url: str, params: dict | None = None, status: int = 200):
    """GET through a test client; a status other than the expected one stops the run, since its
    time would not be the page's."""
    resp = http.get(url, params or {})
    if resp.status_code != status:
        raise RuntimeError(f"GET {url} {params}: {resp.status_code} {resp.content[:300]!r}")
    return resp


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2) if xs else float("nan")


def query_ms(q: Query | None) -> float:
    return q[2] if q else float("nan")


def rows_of(body) -> list:
    """The rows of a list response: the API's queue is a bare list, the asset list has results,
    the review page's queue.json has items."""
    return body if isinstance(body, list) else body.get("results", body.get("items", []))


def public(d: dict) -> dict:
    """The JSON-worthy part of a measurement (keys with a leading _ hold raw responses and SQL)."""
    return {k: v for k, v in d.items() if not k.startswith("_")}


def list_query(page: int) -> Pick:
    """The list view's page query: the one asking for page + 1 rows."""
    pat = re.compile(rf'FROM "labeling_(asset|suggestion)".*LIMIT {page + 1}$', re.S)
    return lambda log: next((q for q in log if pat.search(q[0])), None)


def queue_query(log: list[Query]) -> Query | None:
    return next((q for q in log if 'FROM "labeling_suggestion"' in q[0] and "ORDER BY" in q[0]), None)


def cursor_at(qs, rows: int) -> str:
    """The cursor the API gives after ``rows`` rows of this order (base64 JSON of the last row's
    sort key), so a page at any depth is reached without walking there. ``qs``: assets by id,
    or suggestions by (-uncertainty, id)."""
    from labeling.api.base import encode_cursor
    from labeling.models import Asset

    if qs.model is Asset:
        return encode_cursor({"id": qs.values_list("pk", flat=True)[rows - 1]})
    s = qs.values("uncertainty", "pk")[rows - 1]
    return encode_cursor({"u": s["uncertainty"], "id": s["pk"]})


@dataclass
class Measurer:
    """The measurements of one run, sharing its probe, repeats, page size and walk length."""

    probe: Probe
    repeats: int
    page: int
    walk: int
    page_query: Pick = field(init=False)

    def __post_init__(self) -> None:
        self.page_query = list_query(self.page)

    def measure(self, http, url: str, params: dict, pick: Pick | None = None) -> dict:
        """p50/p95 of the whole request, of its SQL and of its main query (``pick``, by default
        the list's page query)."""
        pick = pick or self.page_query
        runs = self.probe.repeat(lambda: request(http, url, params), self.repeats)
        totals = [ms for _, ms, _ in runs]
        sqls = [sum(q[2] for q in log) for _, _, log in runs]
        mains = [query_ms(pick(log)) for _, _, log in runs]
        resp, _, log = runs[-1]
        body = resp.json()
        slowest = max(log, key=lambda q: q[2])
        return {
            "p50_ms": pct(totals, 50), "p95_ms": pct(totals, 95), "sql_p50_ms": pct(sqls, 50),
            "main_sql_p50_ms": pct(mains, 50), "main_sql_p95_ms": pct(mains, 95), "queries": len(log),
            "rows": len(rows_of(body)), "repeats": len(totals),
            "slowest_sql": {"ms": round(slowest[2], 2), "sql": slowest[0][:160]},
            "_main": pick(log), "_slowest": slowest, "_body": body,
        }

    def variant(self, http, url: str, params: dict, jumps: dict[str, tuple[int, str]]) -> tuple[dict, dict]:
        """One list variant: its first page, the page after following the cursor ``walk`` times
        (timing each page on the way), and the pages at ``jumps`` (label: (depth, cursor)).
        Returns the variant's entry and the EXPLAIN of its page query at the slowest point:
        the planner picks other joins at other cursor values."""
        base = {**params, "limit": self.page}
        pts = {"first": (self.measure(http, url, base), 0)}
        cursor, times, mains = pts["first"][0]["_body"]["next_cursor"], [], []
        for _ in range(self.walk):
            if cursor is None:
                break
            resp, ms, log = self.probe.get(http, url, {**base, "cursor": cursor})
            times.append(ms)
            mains.append(query_ms(self.page_query(log)))
            cursor = resp.json()["next_cursor"]
        if cursor:  # fewer than walk + 1 pages (a rare tag): no such point
            pts[f"page {self.walk + 1}"] = (self.measure(http, url, {**base, "cursor": cursor}),
                                            self.page * self.walk)
        for label, (depth, jump) in jumps.items():
            pts[label] = (self.measure(http, url, {**base, "cursor": jump}), depth)
        worst = max(pts, key=lambda k: pts[k][0]["main_sql_p50_ms"])
        entry = {
            "walk": {"pages": len(times), "total_s": round(sum(times) / 1000, 2), "page_p50_ms": pct(times, 50),
                     "page_p95_ms": pct(times, 95), "main_sql_p50_ms": pct(mains, 50)},
            "points": {label: {**public(m), "depth_rows": depth} for label, (m, depth) in pts.items()},
        }
        return entry, {**explain(pts[worst][0]["_main"]), "at": worst}

    def offset(self, page_at: Callable[[int], Any], points: dict[str, dict]) -> tuple[list[dict], dict]:
        """The OFFSET baseline: ``page_at(offset)`` (a sliced ORM query) at the depth of each of
        a variant's keyset ``points``, beside that point's keyset times; and the EXPLAIN of the
        deepest."""
        rows = []
        for label, keyset in points.items():
            off = keyset["depth_rows"]
            runs = self.probe.repeat(lambda: list(page_at(off)), self.repeats)
            times = [ms for _, ms, _ in runs]
            p50, keyset_p50 = pct(times, 50), keyset["main_sql_p50_ms"]
            rows.append({
                "point": label, "depth_rows": off, "offset_sql_p50_ms": p50, "offset_sql_p95_ms": pct(times, 95),
                "keyset_sql_p50_ms": keyset_p50, "keyset_api_p50_ms": keyset["p50_ms"],
                "offset_over_keyset_sql": round(p50 / keyset_p50, 1) if keyset_p50 else None,
            })
        return rows, {**explain(runs[-1][2][0]), "at": label}


# --- EXPLAIN ---------------------------------------------------------------------------------------


def explain(query: Query) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of a logged query: its times, seq scans, indexes, buffers and
    the plan tree as indented lines."""
    sql, params = query[0], query[1]
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        raw = cur.fetchone()[0]
    doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    lines: list[str] = []
    seq: list[str] = []
    idx: list[str] = []

    def walk(node: dict, depth: int) -> None:
        label = node["Node Type"]
        if node.get("Index Name"):
            label += f" using {node['Index Name']}"
            idx.append(node["Index Name"])
        if node.get("Relation Name"):
            label += f" on {node['Relation Name']}"
        if node["Node Type"] == "Seq Scan":
            seq.append(node.get("Relation Name", "?"))
        loops = node.get("Actual Loops", 1)
        extra = [f"rows={node.get('Actual Rows')}" + (f"x{loops}" if loops != 1 else "")]
        removed = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Join Filter", 0)
        if removed:
            extra.append(f"removed={removed * loops:,}")
        if node.get("Sort Method"):
            extra.append(node["Sort Method"])
        if node.get("Heap Fetches"):
            extra.append(f"heap_fetches={node['Heap Fetches']:,}")
        extra.append(f"{node.get('Actual Total Time', 0):.1f}ms")
        extra.append(f"buf={node.get('Shared Hit Blocks', 0) + node.get('Shared Read Blocks', 0):,}")
        lines.append("  " * depth + label + " (" + ", ".join(extra) + ")")
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(doc["Plan"], 0)
    top = doc["Plan"]
    return {
        "execution_ms": round(doc.get("Execution Time", 0.0), 2), "planning_ms": round(doc.get("Planning Time", 0.0), 2),
        "jit_ms": round(doc.get("JIT", {}).get("Timing", {}).get("Total", 0.0), 2) if doc.get("JIT") else 0.0,
        "seq_scans": sorted(set(seq)), "indexes": sorted(set(idx)),
        "shared_hit": top.get("Shared Hit Blocks", 0), "shared_read": top.get("Shared Read Blocks", 0),
        "tree": lines, "sql": sql, "params": [str(p) for p in (params or [])],
    }


def explain_line(e: dict) -> str:
    scan = f"SEQ SCAN on {', '.join(e['seq_scans'])}" if e["seq_scans"] else "no seq scan"
    return (f"{e['execution_ms']:.1f} ms, {scan}; indexes: {', '.join(e['indexes']) or '-'}; "
            f"buffers {e['shared_hit'] + e['shared_read']:,} ({e['shared_read']:,} read)"
            + (f"; JIT {e['jit_ms']:.0f} ms" if e["jit_ms"] else ""))


# --- no media reads --------------------------------------------------------------------------------


def forbid_media_reads() -> dict:
    """Counts every file-storage or image open from now on (expected during the measured
    requests: none, as list endpoints serve paths, not files; the assets' files do not exist)."""
    from django.core.files.storage import FileSystemStorage
    from PIL import Image

    seen: dict = {"count": 0, "what": []}

    def spy_on(owner, name: str, label: str, arg: int) -> None:
        original = getattr(owner, name)

        def spy(*a, **kw):
            seen["count"] += 1
            if len(seen["what"]) < 5:
                seen["what"].append(f"{label}{a[arg:arg + 1]!r}")
            return original(*a, **kw)

        setattr(owner, name, spy)

    for name in ("_open", "exists", "size", "path"):
        spy_on(FileSystemStorage, name, f"FileSystemStorage.{name}", 1)  # a[0] is the storage
    spy_on(Image, "open", "PIL.Image.open", 0)
    return seen
