"""Report latency at scale (`python -m bench reports --rows 1000000`).

Issue 6 acceptance: at 1M x 1M (20% overlap) on PostgreSQL, the summary report's p99
< 50 ms and one overlaps page < 100 ms. The two lists are written straight into the
tables with `generate_series` (ingest has its own benchmark, `bench ingest`): 1M records
and tokens per side, the 200k matches and their per-pair counts, exactly what the upload
and match job leave behind; then a real `blindmap-server serve` on 127.0.0.1 answers
over HTTP with keep-alive, one request at a time:

- summary: `--requests` times (default 200), p50/p95/p99;
- overlaps: the first page and pages deep in the list (cursor from a walk), 100 records
  each, `--requests // 4` times each;
- white space and lookup are not in the acceptance; one overlaps page stands for them;
- bulk export (issue 7: the end-to-end benchmark's reports stage fetches every overlap
  page): the whole overlaps report fetched through the SDK without decrypting, once per
  `--export-limits` page size and `--export-modes` mode (`json`: JSON pages one after
  the other, `reports.fetch_overlaps`; `binary`: binary pages one after the other;
  `binary-2`: binary pages two in flight from their cursors, as `reports.overlap_rows`
  and the end-to-end benchmark fetch them), with the wall time and the CPU time per row
  of the server process, of the PostgreSQL backends serving it and of this (client)
  process. CPU time is the figure to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import httpx

from bench import bench_ingest as bi


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def seed(url: str, pid: str, rows: int, overlap: float) -> None:
    """Fill both sides' committed lists directly in PostgreSQL."""
    import psycopg

    from blindmap.normalize import NORMALIZER_VERSION

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    shared = int(rows * overlap)
    with psycopg.connect(dsn, autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute("SELECT id, slug FROM companies")
        company = {slug: cid for cid, slug in cur.fetchall()}
        nums = {}
        for slug in ("acme", "globex"):
            cur.execute(
                "SELECT id FROM populations WHERE company_id = %s AND slug = 'customers'",
                (company[slug],),
            )
            (pop,) = cur.fetchone()  # type: ignore[misc]
            cur.execute(
                "INSERT INTO uploads (id, partnership_id, company_id, population_id, status,"
                " normalizer_version, token_kinds, sealed_fields, my_epoch, partner_epoch,"
                " record_count, chunk_count, digest, confirm_shrink, created_at, committed_at)"
                " VALUES (%s, %s, %s, %s, 'committed', %s, '[\"domain\"]', '[\"name\"]', 1, 1,"
                " %s, 1, repeat('0', 64), false, now(), now()) RETURNING num",
                (uuid.uuid4(), pid, company[slug], pop, NORMALIZER_VERSION, rows),
            )
            (nums[slug],) = cur.fetchone()  # type: ignore[misc]
        a, b = nums["acme"], nums["globex"]
        # acme holds values 0..rows-1; globex holds rows-shared..2*rows-shared-1
        for num, offset in ((a, 0), (b, rows - shared)):
            cur.execute(
                "INSERT INTO records (upload_num, seq, partnership_id, ref, self_sealed,"
                " partner_sealed) SELECT %s, g, %s, md5(%s || g::text),"
                " decode(repeat(md5(g::text), 3), 'hex'), decode(repeat(md5(g::text), 2), 'hex')"
                " FROM generate_series(0, %s - 1) g",
                (num, pid, str(num), rows),
            )
            cur.execute(
                "INSERT INTO tokens (upload_num, kind, value, seq, partnership_id)"
                " SELECT %s, 0, substring(decode(md5((g + %s)::text), 'hex') from 1 for 16), g, %s"
                " FROM generate_series(0, %s - 1) g",
                (num, offset, pid, rows),
            )
        cur.execute(
            "INSERT INTO matches (a_upload, a_seq, b_upload, b_seq, partnership_id)"
            " SELECT %s, g + %s, %s, g, %s FROM generate_series(0, %s - 1) g",
            (a, rows - shared, b, pid, shared),
        )
        cur.execute(
            "INSERT INTO match_counts (a_upload, b_upload, partnership_id, a_records, b_records)"
            " VALUES (%s, %s, %s, %s, %s)",
            (a, b, pid, shared, shared),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


def _timed(
    http: httpx.Client, path: str, headers: dict[str, str], **params: Any
) -> tuple[float, Any]:
    t = time.perf_counter()
    r = http.get(path, headers=headers, params=params)
    ms = (time.perf_counter() - t) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return ms, r.json()


EXPORT_MODES = ("json", "binary", "binary-2")


def export(
    base: str, key: str, pid: str, server_pid: int, url: str, limit: int, mode: str = "json"
) -> dict[str, Any]:
    """Every overlap page through the SDK; wall time and CPU per row on each side. Modes:
    `json` the JSON pages one after the other (`reports.fetch_overlaps`), `binary` binary
    pages (docs/protocol.md §9.1) one after the other, `binary-2` binary pages two in
    flight from their cursors (what `reports.overlap_rows` does, without decrypting:
    these payloads are random bytes)."""
    import blindmap
    from bench.load import _backend_pids, _cpu_seconds
    from blindmap import reports

    with blindmap.Client(api_key=key, base_url=base, timeout=600) as client:
        client.report_overlaps(pid, limit=1)  # the pool has its connection
        backends = _backend_pids(url)
        c0, s0, p0 = time.process_time(), _cpu_seconds([server_pid]), _cpu_seconds(backends)
        t0 = time.perf_counter()
        pages = 0

        def progress(_n: int) -> None:
            nonlocal pages
            pages += 1

        if mode == "json":
            items, _, _ = reports.fetch_overlaps(
                client, uuid.UUID(pid), limit=limit, on_progress=progress
            )
            rows = len(items)
            del items
        else:
            rows = 0
            for page in client.iter_raw_overlap_pages(
                uuid.UUID(pid), limit=limit, in_flight=2 if mode == "binary-2" else 1
            ):
                rows += len(page.items)
                progress(rows)
        wall = time.perf_counter() - t0
        c1, s1, p1 = time.process_time(), _cpu_seconds([server_pid]), _cpu_seconds(backends)
    us = 1e6 / max(1, rows)
    return {
        "mode": mode,
        "limit": limit,
        "pages": pages,
        "rows": rows,
        "wall_s": round(wall, 2),
        "server_cpu_us_per_row": round((s1 - s0) * us, 1),
        "postgresql_cpu_us_per_row": round((p1 - p0) * us, 1),
        "client_cpu_us_per_row": round((c1 - c0) * us, 1),
    }


def run(
    rows: int,
    overlap: float,
    requests: int,
    export_limits: tuple[int, ...] = (),
    export_modes: tuple[str, ...] = ("json",),
) -> dict[str, Any]:
    with bi.scratch_database("postgresql") as url:
        keys = bi.make_companies(url)
        # the bulk exports release every matched record, several times over
        os.environ.setdefault("BLINDMAP_REVEAL_BUDGET_PER_DAY", str(10**12))
        server = bi.Server(url, 10_000)
        try:
            with httpx.Client(base_url=server.base, timeout=60) as http:
                pid = bi.setup_partnership(http, keys)
                t0 = time.perf_counter()
                seed(url, pid, rows, overlap)
                seeded = time.perf_counter() - t0
                h = {"Authorization": f"Bearer {keys['acme']}"}
                base = f"/v1/partnerships/{pid}"
                _timed(http, base + "/reports/summary", h)  # warm
                summary = [_timed(http, base + "/reports/summary", h)[0] for _ in range(requests)]
                first = [
                    _timed(http, base + "/reports/overlaps", h, limit=100)[0]
                    for _ in range(max(5, requests // 4))
                ]
                # a cursor half-way down the matched list
                _, page = _timed(http, base + "/reports/overlaps", h, limit=1000)
                cursor = page["next_cursor"]
                for _ in range(int(rows * overlap / 1000 / 2) - 1):
                    _, page = _timed(http, base + "/reports/overlaps", h, limit=1000, cursor=cursor)
                    cursor = page["next_cursor"] or cursor
                deep = [
                    _timed(http, base + "/reports/overlaps", h, limit=100, cursor=cursor)[0]
                    for _ in range(max(5, requests // 4))
                ]
            exports = [
                export(server.base, keys["acme"], pid, server.proc.pid, url, limit, mode)
                for limit in export_limits
                for mode in export_modes
            ]
        finally:
            server.stop()
    out: dict[str, Any] = {
        "rows": rows,
        "overlap": overlap,
        "seed_s": round(seeded, 1),
        "export": exports,
    }
    for name, xs in (
        ("summary", summary),
        ("overlaps_first_page", first),
        ("overlaps_deep_page", deep),
    ):
        out[name] = {
            "n": len(xs),
            "p50_ms": round(statistics.median(xs), 1),
            "p95_ms": round(_pct(xs, 0.95), 1),
            "p99_ms": round(_pct(xs, 0.99), 1),
        }
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench reports")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="100k rows, 50 requests")
    ap.add_argument(
        "--export-limits",
        default="1000",
        help="page sizes of the full overlaps walks (comma-separated; empty: none)",
    )
    ap.add_argument(
        "--export-modes",
        default="json",
        help=f"how the walks fetch (comma-separated, of {', '.join(EXPORT_MODES)})",
    )
    args = ap.parse_args(argv)
    modes = tuple(m.strip() for m in args.export_modes.split(",") if m.strip())
    if not set(modes) <= set(EXPORT_MODES):
        ap.error(f"--export-modes: choose among {', '.join(EXPORT_MODES)}")
    if args.quick:
        args.rows, args.requests = 100_000, 50
    reason = bi.pg_unavailable()
    if reason:
        print(f"reports: skipped, PostgreSQL unavailable ({reason})")
        return
    limits = tuple(int(x) for x in args.export_limits.split(",") if x.strip())
    res = run(args.rows, args.overlap, args.requests, limits, modes)
    print("| rows per side | summary p50 / p99 | overlaps page 1 p50 / p99 | deep page p50 / p99 |")
    print("|---|---|---|---|")
    s, f, d = res["summary"], res["overlaps_first_page"], res["overlaps_deep_page"]
    print(
        f"| {res['rows']:,} | {s['p50_ms']} / {s['p99_ms']} ms | {f['p50_ms']} / {f['p99_ms']} ms "
        f"| {d['p50_ms']} / {d['p99_ms']} ms |"
    )
    if res["export"]:
        print()
        print(
            "| fetched as | page size | pages | rows | wall | server CPU / row "
            "| PostgreSQL CPU / row | client CPU / row |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for e in res["export"]:
            print(
                f"| {e['mode']} | {e['limit']} | {e['pages']} | {e['rows']:,} | {e['wall_s']} s "
                f"| {e['server_cpu_us_per_row']} µs | {e['postgresql_cpu_us_per_row']} µs "
                f"| {e['client_cpu_us_per_row']} µs |"
            )
