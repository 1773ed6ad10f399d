"""The match job's join on PostgreSQL, alone, on synthetic tokens (BENCHMARKS.md, "The
PostgreSQL matching core").

    .venv/bin/python -m bench.match_join                 # 1M x 1M, 20% shared
    .venv/bin/python -m bench.match_join --n 200000
    .venv/bin/python -m bench.match_join --db sqlite     # SQLite: the insert order

Creates a scratch database on the PostgreSQL at 127.0.0.1:5432 (dropped at the end) with
the `tokens` and `matches` tables of service/models.py, two uploads of N random 16-byte
tokens of which 20% are shared, and times variants of the job's `INSERT … SELECT`, each
in a transaction that is rolled back, interleaved, median of --runs: the statement the
job runs (`_JOIN`), the pairs inserted in key order (a sorted DISTINCT), both again as a
merge join over index-only scans after a `VACUUM` (which the job cannot have: nothing
vacuums a fresh upload), and token values as `uuid`. With `--db sqlite`: the same
tables (`WITHOUT ROWID`) in a temporary SQLite file, record numbers shuffled against token
order as real lists have them, the job's statement with and without its `ORDER BY 2, 4`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid

import psycopg

from service.overlap.service import _JOIN

ADMIN = os.environ.get("BLINDMAP_LOAD_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PID = uuid.UUID(int=1)
# as the job runs (and JIT off, as on the service's connections: service/db.py)
_SETUP = ("SET LOCAL enable_nestloop = off", "SET LOCAL work_mem = '64MB'", "SET LOCAL jit = off")
_MERGE = (*_SETUP, "SET LOCAL enable_hashjoin = off")
_MERGE_NOSORT = (*_MERGE, "SET LOCAL enable_sort = off")


def _tables(c: psycopg.Connection, value_type: str, sdk_order: bool = True) -> None:
    c.execute("DROP TABLE IF EXISTS tokens, matches")
    c.execute(
        f"CREATE TABLE tokens (upload_num int, kind smallint, value {value_type}, seq bigint, "
        "partnership_id uuid NOT NULL, PRIMARY KEY (upload_num, kind, value, seq))"
    )
    c.execute(
        "CREATE TABLE matches (a_upload int, a_seq bigint, b_upload int, b_seq bigint, "
        "partnership_id uuid NOT NULL, PRIMARY KEY (a_upload, a_seq, b_upload, b_seq))"
    )
    c.execute("CREATE INDEX ON matches (b_upload, b_seq)")
    value = "md5(i::text)::uuid" if value_type == "uuid" else "decode(md5(i::text), 'hex')"
    for num, lo, hi in ((1, 1, N), (2, int(N * 0.8) + 1, int(N * 1.8))):
        if sdk_order:
            # as the SDK uploads: records numbered, and stored, in the order of their tokens
            c.execute(
                f"INSERT INTO tokens SELECT {num}, 0, v, row_number() OVER (ORDER BY v), %s "
                f"FROM (SELECT {value} AS v FROM generate_series({lo}, {hi}) i) s ORDER BY v",
                (PID,),
            )
        else:
            c.execute(
                f"INSERT INTO tokens SELECT {num}, 0, {value}, i, %s "
                f"FROM generate_series({lo}, {hi}) i",
                (PID,),
            )
    c.execute("CHECKPOINT")


def _time(c: psycopg.Connection, sql: str, setup: tuple[str, ...] = _SETUP) -> tuple[float, int]:
    with c.transaction(force_rollback=True):
        for s in setup:
            c.execute(s)
        t = time.perf_counter()
        n = c.execute(
            sql, {"a_upload": 1, "b_upload": 2, "pid": PID, "other": 2, "mine": 1}
        ).rowcount
        return time.perf_counter() - t, n


def _medians(c: psycopg.Connection, variants: list[tuple[str, str, tuple[str, ...]]]) -> None:
    """Each variant once per round, rounds repeated: no variant always runs on a cold
    cache or right after another's writes."""
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    pairs: dict[str, int] = {}
    _time(c, variants[0][1], variants[0][2])  # warm the cache
    for _ in range(RUNS):
        for label, sql, setup in variants:
            t, pairs[label] = _time(c, sql, setup)
            times[label].append(t)
    for label, ts in times.items():
        print(
            f"  {label:<58} {statistics.median(ts):6.3f} s  (min {min(ts):.3f}, "
            f"{pairs[label]:,} pairs)",
            flush=True,
        )


def _sqlite() -> None:
    with tempfile.TemporaryDirectory() as d:
        c = sqlite3.connect(os.path.join(d, "match.db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute(
            "CREATE TABLE tokens (upload_num INTEGER, kind SMALLINT, value BLOB, seq BIGINT, "
            "partnership_id CHAR(32) NOT NULL, PRIMARY KEY (upload_num, kind, value, seq)) "
            "WITHOUT ROWID"
        )
        c.execute(
            "CREATE TABLE matches (a_upload INTEGER, a_seq BIGINT, b_upload INTEGER, "
            "b_seq BIGINT, partnership_id CHAR(32) NOT NULL, "
            "PRIMARY KEY (a_upload, a_seq, b_upload, b_seq)) WITHOUT ROWID"
        )
        c.execute("CREATE INDEX ix_matches_b ON matches (b_upload, b_seq)")
        c.execute("BEGIN")
        for num, lo, hi in ((1, 1, N), (2, int(N * 0.8) + 1, int(N * 1.8))):
            seqs = list(range(lo, hi + 1))
            random.Random(num).shuffle(seqs)  # a record's number has nothing to do with its token
            c.executemany(
                "INSERT INTO tokens VALUES (?, 0, ?, ?, 'p')",
                (
                    (num, hashlib.md5(str(i).encode()).digest(), seq)
                    for i, seq in zip(range(lo, hi + 1), seqs, strict=True)
                ),
            )
        c.execute("COMMIT")
        params = {"a_upload": 1, "b_upload": 2, "pid": "p", "other": 2, "mine": 1}
        variants = {
            "the job's statement (ORDER BY 2, 4)": " ORDER BY 2, 4 ON CONFLICT DO NOTHING",
            "without the ORDER BY (before session 4)": " ON CONFLICT DO NOTHING",
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        print(f"match join on SQLite, {N:,} x {N:,} tokens, median of {RUNS}:")
        for r in range(RUNS + 1):  # the first round warms the cache
            for label, tail in variants.items():
                sql = _JOIN.format(a_seq="t1.seq", b_seq="t2.seq", distinct="", tail=tail)
                sql = sql.replace(":kinds", "(0)")
                c.execute("BEGIN")
                t = time.perf_counter()
                n = c.execute(sql, params).rowcount
                if r:
                    times[label].append(time.perf_counter() - t)
                c.execute("ROLLBACK")
        for label, ts in times.items():
            print(f"  {label:<55} {statistics.median(ts):6.3f} s  (min {min(ts):.3f}, {n:,} pairs)")
        c.close()


def main() -> None:
    global N, RUNS
    ap = argparse.ArgumentParser(prog="python -m bench.match_join")
    ap.add_argument("--n", type=int, default=1_000_000, help="tokens per upload")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    args = ap.parse_args()
    N, RUNS = args.n, args.runs
    if args.db == "sqlite":
        _sqlite()
        return
    db = f"blindmap_match_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
        try:
            with psycopg.connect(f"{ADMIN} dbname={db}", autocommit=True) as c:
                current = (
                    _JOIN.format(a_seq="t1.seq", b_seq="t2.seq", distinct="DISTINCT ", tail="")
                    .replace(":kinds", "(0)")
                    .replace(":a_upload", "%(a_upload)s")
                    .replace(":b_upload", "%(b_upload)s")
                    .replace(":pid", "%(pid)s")
                    .replace(":other", "%(other)s")
                    .replace(":mine", "%(mine)s")
                )
                ordered = (
                    "INSERT INTO matches (a_upload, a_seq, b_upload, b_seq, partnership_id) "
                    "SELECT 1, a_seq, 2, b_seq, %(pid)s FROM (SELECT DISTINCT t1.seq AS a_seq, "
                    "t2.seq AS b_seq FROM tokens t1 JOIN tokens t2 ON t2.upload_num = 2 "
                    "AND t2.kind = t1.kind AND t2.value = t1.value "
                    "WHERE t1.upload_num = 1 AND t1.kind IN (0)) AS pairs ORDER BY a_seq, b_seq"
                )
                plain = current.replace("DISTINCT ", "")
                print(f"match join, {N:,} x {N:,} tokens, median of {RUNS}:")
                for sdk_order, what in ((False, "random order"), (True, "SDK order")):
                    _tables(c, "bytea", sdk_order=sdk_order)
                    _medians(
                        c,
                        [
                            (f"{what}: DISTINCT, hash join (before session 6)", current, _SETUP),
                            (f"{what}: DISTINCT, pairs in key order", ordered, _SETUP),
                            (f"{what}: no DISTINCT, hash join", plain, _SETUP),
                            (f"{what}: no DISTINCT, merge join", plain, _MERGE),
                            (f"{what}: no DISTINCT, merge of index scans", plain, _MERGE_NOSORT),
                        ],
                    )
                t = time.perf_counter()
                c.execute("VACUUM (ANALYZE) tokens")
                print(f"  {'VACUUM (ANALYZE) tokens':<55} {time.perf_counter() - t:6.3f} s")
                merge = _MERGE
                _medians(
                    c,
                    [
                        ("bytea, after VACUUM: merge join, the job's statement", current, merge),
                        ("bytea, after VACUUM: merge join, pairs in key order", ordered, merge),
                    ],
                )
                _tables(c, "uuid")
                _medians(c, [("uuid token values, the job's statement", current, _SETUP)])
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


N = RUNS = 0

if __name__ == "__main__":
    main()
