"""Storage and server-side CPU per record on PostgreSQL (`python -m bench.storage`).

For docs/scaling.md. Runs the end-to-end benchmark's Blindmap path once on a scratch
PostgreSQL database (bench/bench_e2e.py: `bench.datagen` CSVs, seed 1 and 2, 20% overlap;
a real `blindmap-server serve` without its embedded worker; each company's real
`blindmap.sync` in its own process; then a `blindmap-server worker` process runs the match
jobs; A's client fetches and decrypts every overlap page), then, before the database is
dropped, reads per table:

- rows, heap bytes (`pg_relation_size`), index bytes (`pg_indexes_size`), TOAST and the
  rest (`pg_total_relation_size` minus both), total, and bytes per row and per uploaded
  record, for records, tokens, matches and match_counts (plus each index);
- server-side CPU per stage: the API and worker processes (utime + stime, /proc) and the
  PostgreSQL backends of the scratch database (found in `pg_stat_activity` every 0.1 s,
  their CPU read from /proc; autovacuum workers on the database included);
- client CPU per sync (the sync processes' rusage) and the WAL written during each stage
  (`pg_current_wal_lsn`; cluster-wide, so it includes anything else writing to the same
  PostgreSQL meanwhile).

Numbers are for the sizes stored right after ingest and the match job (fresh B-trees
built from random keys, no bloat from updates). Run it inside the benchmark lock:
`flock /tmp/blindmap-bench.lock .venv/bin/python -m bench.storage --size 100k`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import bench_e2e as e2e
from bench import bench_ingest as bi

TABLES = ("records", "tokens", "matches", "match_counts")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


@dataclass
class BackendCpu:
    """CPU of every PostgreSQL backend connected to one database, polled in a thread.

    A backend's CPU counter only grows, so the last value read is kept per pid; a
    backend that exits loses at most its last `every` seconds.
    """

    dbname: str
    every: float = 0.1
    last: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def poll(self) -> None:
        import psycopg

        with psycopg.connect(bi._pg_admin(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.dbname,)
            ).fetchall()
        for (pid,) in rows:
            cpu = e2e._cpu_s(int(pid))
            if cpu:
                self.last[int(pid)] = max(self.last.get(int(pid), 0.0), cpu)

    def total(self) -> float:
        self.poll()
        return sum(self.last.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a missed sample only loses precision
                self.poll()
            self._stop.wait(self.every)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _wal_lsn() -> str:
    import psycopg

    with psycopg.connect(bi._pg_admin(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def _wal_bytes(since: str) -> int:
    import psycopg

    with psycopg.connect(bi._pg_admin(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (since,)).fetchone()
    return int(row[0]) if row else 0


def table_sizes(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Per table and per index sizes of the scratch database, and the database size."""
    import psycopg

    dsn = bi._pg_admin().replace("dbname=postgres", f"dbname={_dbname(url)}")
    tables, indexes = [], []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in TABLES:
            row = conn.execute(
                f"SELECT count(*), pg_relation_size('{t}'), pg_indexes_size('{t}'), "
                f"pg_total_relation_size('{t}') FROM {t}"
            ).fetchone()
            assert row is not None
            n, heap, idx, total = (int(x) for x in row)
            tables.append({"table": t, "rows": n, "heap": heap, "indexes": idx, "total": total})
            for name, size in conn.execute(
                "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) "
                "FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1",
                (t,),
            ).fetchall():
                indexes.append({"table": t, "index": str(name), "bytes": int(size)})
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return tables, indexes, int(row[0]) if row else 0


def _start_worker(url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BLINDMAP_ENV": "prod",
        "BLINDMAP_SECRET_KEY": bi.SECRET,
        "BLINDMAP_DATABASE_URL": url,
        "BLINDMAP_LOG_LEVEL": "WARNING",
        "BLINDMAP_WORKER_POLL_SECONDS": "0.2",
    }
    exe = Path(sys.executable).with_name("blindmap-server")
    return subprocess.Popen([str(exe), "worker"], env=env, cwd=bi.ROOT, stderr=subprocess.DEVNULL)


def _drain(url: str, timeout: float = 600) -> None:
    """Wait until the scratch database's job queue is empty."""
    import psycopg

    dsn = bi._pg_admin().replace("dbname=postgres", f"dbname={_dbname(url)}")
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
            if row is not None and int(row[0]) == 0:
                return
            time.sleep(0.1)
    raise SystemExit(f"jobs still pending after {timeout:.0f} s")


def _settle(pid: int, timeout: float = 60) -> None:
    """Wait until a process has started and idles (its CPU stops growing)."""
    time.sleep(1.0)
    deadline, last = time.monotonic() + timeout, e2e._cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = e2e._cpu_s(pid)
        if now - last < 0.03:
            return
        last = now


@dataclass
class Stage:
    name: str
    wall_s: float
    api_cpu_s: float
    db_cpu_s: float
    client_cpu_s: float
    wal_bytes: int


def run(n: int) -> None:
    a_csv, b_csv, truth = e2e.make_data(n)
    print(
        f"  storage: {n:,} accounts per side, {len(truth):,} shared domains; load {e2e._load()}",
        flush=True,
    )
    stages: list[Stage] = []
    with bi.scratch_database("postgresql") as url:
        keys = bi.make_companies(url)
        os.environ["BLINDMAP_EMBEDDED_WORKER"] = "false"
        try:
            server = e2e.Server(url)
        finally:
            del os.environ["BLINDMAP_EMBEDDED_WORKER"]
        worker: list[subprocess.Popen[bytes]] = []

        def _api_cpu() -> float:
            """The API process and the job worker (once started)."""
            return server.cpu_s() + sum(e2e._cpu_s(w.pid) for w in worker)

        backends = BackendCpu(_dbname(url))
        backends.start()
        state = tempfile.mkdtemp(prefix="blindmap-storage-")
        synced: dict[str, dict[str, Any]] = {}
        rep: dict[str, Any] = {}
        try:
            with httpx.Client(base_url=server.base, timeout=600) as http:
                pid, privs = e2e.setup_partnership(http, keys)
                worker.append(_start_worker(url))
                _settle(worker[0].pid)
                worker[0].send_signal(signal.SIGSTOP)

                def measure(name: str, fn: Callable[[], None]) -> None:
                    api0, db0, cl0 = _api_cpu(), backends.total(), _children_cpu_s()
                    lsn, t0 = _wal_lsn(), time.perf_counter()
                    fn()
                    stages.append(
                        Stage(
                            name,
                            time.perf_counter() - t0,
                            _api_cpu() - api0,
                            backends.total() - db0,
                            _children_cpu_s() - cl0,
                            _wal_bytes(lsn),
                        )
                    )

                for slug, csv_path in (("acme", a_csv), ("globex", b_csv)):

                    def sync(slug: str = slug, csv_path: Any = csv_path) -> None:
                        synced[slug] = e2e.run_worker(
                            "sync",
                            base_url=server.base,
                            api_key=keys[slug],
                            private_key=privs[slug],
                            csv=str(csv_path),
                            state_dir=f"{state}/{slug}",
                        )

                    measure(f"sync {slug}", sync)
                    if slug == "acme":
                        # A's own match job (nothing to match yet) runs now, outside the
                        # measured stages; as in production, B's job then does the join once.
                        worker[0].send_signal(signal.SIGCONT)
                        _drain(url)
                        worker[0].send_signal(signal.SIGSTOP)

                # The match jobs run in a `blindmap-server worker` (the API has no embedded
                # worker), started and settled beforehand but stopped (SIGSTOP) during the
                # syncs, so their CPU is neither mixed into sync B's nor the worker's start-up.
                def match() -> None:
                    worker[0].send_signal(signal.SIGCONT)
                    if bi.wait_match(http, keys["globex"], pid, 600) is None:
                        raise SystemExit("the match job did not finish in 600 s")
                    _drain(url)
                    # the job has released its transaction; its backend stays in the pool
                    time.sleep(0.3)

                measure("match job", match)

                def report() -> None:
                    rep.update(
                        e2e.run_worker(
                            "report",
                            base_url=server.base,
                            api_key=keys["acme"],
                            private_key=privs["acme"],
                            pid=pid,
                        )
                    )

                measure("reports (A: summary + all overlap pages)", report)
        finally:
            backends.stop()
            for w in worker:
                w.send_signal(signal.SIGCONT)
                w.terminate()
                w.wait(15)
            server.stop()
            shutil.rmtree(state, ignore_errors=True)
        tables, indexes, db_bytes = table_sizes(url)
        _, job_s = bi.count_matches(url, pid)

    records = sum(int(s["records"]) for s in synced.values())
    items = int(rep.get("items", 0))
    print(
        f"\n  stored records {records:,} (A {synced['acme']['records']:,}, B "
        f"{synced['globex']['records']:,}); overlap items fetched by A {items:,}; match job "
        f"{job_s or 0:.2f} s; load {e2e._load()}\n"
    )
    print("| table | rows | heap | indexes | TOAST + rest | total | bytes/row | bytes/record |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in tables:
        rest = t["total"] - t["heap"] - t["indexes"]
        per_row = t["total"] / t["rows"] if t["rows"] else 0.0
        print(
            f"| {t['table']} | {t['rows']:,} | {t['heap'] / 1e6:.1f} MB | "
            f"{t['indexes'] / 1e6:.1f} MB | {rest / 1e6:.2f} MB | {t['total'] / 1e6:.1f} MB | "
            f"{per_row:.0f} | {t['total'] / records:.0f} |"
        )
    total = sum(t["total"] for t in tables)
    print(
        f"| **all four** | | | | | {total / 1e6:.1f} MB | | **{total / records:.0f}** |\n\n"
        f"  database size (incl. catalogs, ~7.5 MB empty): {db_bytes / 1e6:.1f} MB\n"
    )
    print("| index | bytes | bytes/row of its table |")
    print("|---|---:|---:|")
    rows_of = {t["table"]: t["rows"] for t in tables}
    for ix in indexes:
        rows = rows_of[ix["table"]]
        print(f"| {ix['index']} | {ix['bytes'] / 1e6:.1f} MB | {ix['bytes'] / max(rows, 1):.0f} |")
    print(
        "\n| stage | wall | API (+ worker) CPU | PostgreSQL backends CPU | client CPU | WAL | "
        "server CPU µs/unit |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in stages:
        if s.name.startswith("sync"):
            unit = int(synced[s.name.split()[1]]["records"])
            label = "record"
        elif s.name.startswith("match"):
            unit, label = records, "stored record"
        else:
            unit, label = max(items, 1), "overlap item"
        per = (s.api_cpu_s + s.db_cpu_s) / unit * 1e6
        print(
            f"| {s.name} | {s.wall_s:.2f} s | {s.api_cpu_s:.2f} s | {s.db_cpu_s:.2f} s | "
            f"{s.client_cpu_s:.2f} s | {s.wal_bytes / 1e6:.1f} MB | {per:.1f} per {label} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage")
    parser.add_argument(
        "--size", default=os.environ.get("SIZE", "100k"), help="accounts per side: 10k|100k|N"
    )
    args = parser.parse_args(argv)
    if why := bi.pg_unavailable():
        raise SystemExit(f"PostgreSQL not reachable: {why}")
    run(e2e._parse_size(args.size))


if __name__ == "__main__":
    main()
