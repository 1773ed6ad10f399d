"""End to end against the peers (`python -m bench e2e --size 100k|1m --db both --runs 3`).

Issue 7. Two companies, N accounts each (bench/datagen.py, seed 1 and 2, 20% of B's rows
are A's companies rendered anew, 2% duplicates, messy websites), written as Salesforce
CSV exports. For each database (a scratch SQLite file; a scratch PostgreSQL database):

1. **Blindmap**: a real `blindmap-server serve` subprocess on 127.0.0.1 (1 uvicorn
   process, embedded worker). Each company runs `blindmap.sync` in its own client
   process (the SDK, what `blindmap sync` runs: read CSV → normalize → tokens, refs,
   seals → binary chunks → PUT → commit), A then B; then the match job; then A's client
   fetches the summary and every overlap page and decrypts them. Per stage: wall time,
   records/s; peak RSS (VmHWM) of every client process and of the server.
2. **Plaintext baseline** (the incumbents' design: the service holds raw data): one
   process reads and normalizes the same CSVs with the same code, loads the plaintext
   rows (domain, id, name, owner email) into the same database (COPY on PostgreSQL,
   executemany on SQLite), indexes the domain, materializes the join, and fetches the
   joined rows (A's view of the overlap with B's fields).
3. **Peer PSI**: OpenMined PSI (`openmined-psi`, ECDH over P-256; optional: `pip install
   -e '.[bench]'`), client and server in one process, on the same normalized domains
   (B is the client, A the server, RAW data structure so the result is exact): setup,
   request, response, intersection; bytes of the three messages.

Every system's intersection is checked against the generator's ground truth (the set of
companies both lists hold a usable website for); that check is the benchmark's own work
and no system's time includes it (Blindmap's report process stops its clock when the
reports are decrypted, before it hands the domains over). "Matching core": Blindmap = HMAC
tokens of both sides' domains + the match job that joined the two lists (the longer of the
two jobs the commits queue); PSI = its protocol.

Around every Blindmap and baseline run the CPU-seconds spent are read (`_CpuSpent`): the
client processes' rusage, the escrow's and the whole PostgreSQL server's /proc counters,
the machine's busy and idle time; a table of their medians follows the results. With
`--resync`, company A then syncs the same CSV again (a re-sync replacing its list): that
sync's commit, its match job and the replaced list's clean-up job are timed.

Medians of `--runs` runs (the peer's 1M run is slow; `--peer-runs 1`). Targets (1M x 1M,
PostgreSQL): Blindmap end to end <= 30 s, >= 10x faster than PSI end to end, >= 100x on
the matching core, <= 1.5x the plaintext baseline.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import bench_ingest as bi

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench" / ".data"
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
OVERLAP = 0.2
POP = "customers"


def _parse_size(text: str) -> int:
    t = text.strip().lower()
    return SIZES[t] if t in SIZES else int(t.replace("_", "").replace(",", ""))


def _median(xs: list[float]) -> float:
    return bi._median(xs)


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


_cpu_s = bi.proc_cpu_s


# --------------------------------------------------------------------------- data


def make_data(n: int) -> tuple[Path, Path, set[str]]:
    """Both CSVs (cached under bench/.data) and the ground-truth intersection."""
    from bench import datagen

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    a_csv, b_csv = DATA_DIR / f"e2e-{n}-a.csv", DATA_DIR / f"e2e-{n}-b.csv"
    truth_path = DATA_DIR / f"e2e-{n}-truth.json"
    if not (a_csv.exists() and b_csv.exists() and truth_path.exists()):
        t = time.perf_counter()
        a = datagen.generate_accounts(n, seed=1)
        b = datagen.generate_accounts(n, seed=2, overlap_with=a, overlap=OVERLAP)
        datagen.write_csv(a_csv, a)
        datagen.write_csv(b_csv, b)
        truth = sorted(
            {x.expected_domain for x in a if x.expected_domain}
            & {x.expected_domain for x in b if x.expected_domain}
        )
        truth_path.write_text(json.dumps(truth))
        print(f"  generated {n:,} + {n:,} accounts in {time.perf_counter() - t:.1f} s", flush=True)
    return a_csv, b_csv, set(json.loads(truth_path.read_text()))


# ------------------------------------------------------------------------ workers
# Each client-side step runs in its own process (a company's machine) and prints one
# JSON line with its timings and its peak RSS.


def _maxrss_mb() -> float:
    # This process's own peak (VmHWM of its address space). ru_maxrss is not: Linux carries
    # it across fork + exec, so a worker started by a bench process that had just generated
    # 1M accounts reported that process's 1.4 GB as its own.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_sync(spec: dict[str, Any]) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    import blindmap
    from blindmap import sync as bsync

    priv = X25519PrivateKey.from_private_bytes(bytes.fromhex(spec["private_key"]))
    marks: dict[str, float] = {}
    start = time.perf_counter()

    def progress(ev: bsync.ProgressEvent) -> None:
        key = ev.stage if ev.stage != "commit" else f"commit{ev.done}"
        marks.setdefault(key, time.perf_counter() - start)
        if ev.stage == "build" and ev.done == ev.total:
            marks["built"] = time.perf_counter() - start

    with blindmap.Client(api_key=spec["api_key"], base_url=spec["base_url"]) as client:
        client._http.timeout = httpx.Timeout(600)
        report = bsync.sync(
            client,
            spec["csv"],
            private_key=priv,
            population=POP,
            state_dir=spec["state_dir"],
            chunk_size=spec.get("chunk_size", bsync.DEFAULT_CHUNK_SIZE),
            progress=progress,
        )
    total = time.perf_counter() - start
    (up,) = report.uploads
    build_at = marks.get("build", 0.0)
    send_at = marks.get("send", build_at)
    commit_at = marks.get("commit0", total)
    # Chunks go out as they are built: "build" (refs, seals, binary records) and
    # "send" (chunk PUTs) overlap; "build+send" is their wall clock together.
    return {
        "rows": report.rows_read,
        "records": up.records,
        "bytes": up.bytes,
        "read_s": build_at,  # read CSV + normalize, tokens and their sort (to the 1st chunk)
        "build_s": marks.get("built", send_at) - build_at,  # first chunk built to last
        "send_s": commit_at - send_at,  # first chunk landed to the commit
        "build_send_s": commit_at - build_at,
        "commit_s": total - commit_at,
        "total_s": total,
        "ended_at": time.time(),  # the harness times what follows the commit from here
        "rss_mb": _maxrss_mb(),
    }


def _worker_report(spec: dict[str, Any]) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    import blindmap
    from blindmap import reports

    priv = X25519PrivateKey.from_private_bytes(bytes.fromhex(spec["private_key"]))
    start = time.perf_counter()
    with blindmap.Client(api_key=spec["api_key"], base_url=spec["base_url"]) as client:
        client._http.timeout = httpx.Timeout(600)
        p = client.get_partnership(spec["pid"])
        keys = reports.ReportKeys.for_partnership(priv, p)
        summary = client.report_summary(p.id)
        t_summary = time.perf_counter() - start
        # as `blindmap report overlaps` does: each page decrypted while the next is fetched
        rows, _versions, _notes = reports.overlap_rows(client, keys, p.id)
    total = time.perf_counter() - start
    # the harness times the reports until here: what follows (the domains for the check
    # against the ground truth, this result's JSON) is the benchmark's, not Blindmap's
    ended_at = time.time()
    domains = {r.mine.domain for r in rows if r.mine.domain}
    opened = sum(1 for r in rows for x in r.partner if x.fields)
    return {
        "summary_s": t_summary,
        "pages_s": total - t_summary,
        "total_s": total,
        "ended_at": ended_at,
        "items": len(rows),
        "partner_payloads_opened": opened,
        "domains": sorted(domains),
        "cells": len(summary.cells),
        "rss_mb": _maxrss_mb(),
    }


def _plain_rows(read: Any) -> list[tuple[str, str, str, str]]:
    fields = read.field_names
    i_mail = fields.index("owner_email") if "owner_email" in fields else None
    return [
        (a.domain, a.local_id, a.name, a.values[i_mail] if i_mail is not None else "")
        for a in read.accounts[POP]
    ]


def _worker_plain_read(spec: dict[str, Any]) -> dict[str, Any]:
    """One company's CSV, read and normalized as Blindmap's sync does, rows to a file."""
    from blindmap import sync as bsync

    start = time.perf_counter()
    rows = _plain_rows(bsync.read_accounts(spec["csv"], population=POP))
    with open(spec["out"], "wb") as fh:
        pickle.dump(rows, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return {"read_s": time.perf_counter() - start, "rss_mb": _maxrss_mb()}


def _worker_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """Plaintext baseline: the same CSV reading and normalization, then raw rows in SQL."""
    from blindmap import sync as bsync

    start = time.perf_counter()
    if "rows_files" in spec:  # read by two `plain_read` processes at once (--sides together)
        sides = []
        for f in spec["rows_files"]:
            with open(f, "rb") as fh:
                sides.append(pickle.load(fh))
    else:
        sides = [_plain_rows(bsync.read_accounts(p, population=POP)) for p in spec["csvs"]]
    t_read = time.perf_counter() - start
    url = spec["url"]
    t0 = time.perf_counter()
    if url.startswith("sqlite"):
        import sqlite3

        con = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA cache_size=-65536")
        con.execute("DROP TABLE IF EXISTS plain_accounts")
        con.execute("DROP TABLE IF EXISTS plain_matches")
        con.execute(
            "CREATE TABLE plain_accounts (side INTEGER, domain TEXT, local_id TEXT, name TEXT,"
            " owner_email TEXT)"
        )
        con.execute("BEGIN")
        for side, rows in enumerate(sides):
            con.executemany(
                "INSERT INTO plain_accounts VALUES (?, ?, ?, ?, ?)",
                [(side, *r) for r in rows],
            )
        con.execute("CREATE INDEX plain_accounts_domain ON plain_accounts (side, domain)")
        con.execute("COMMIT")
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        con.execute("BEGIN")
        con.execute(
            "CREATE TABLE plain_matches AS SELECT a.rowid AS a_id, b.rowid AS b_id FROM"
            " plain_accounts a JOIN plain_accounts b ON b.side = 1 AND b.domain = a.domain"
            " WHERE a.side = 0"
        )
        con.execute("COMMIT")
        t_join = time.perf_counter() - t0
        t0 = time.perf_counter()
        fetched = con.execute(
            "SELECT a.domain, a.local_id, b.name, b.owner_email FROM plain_matches m"
            " JOIN plain_accounts a ON a.rowid = m.a_id JOIN plain_accounts b ON b.rowid = m.b_id"
        ).fetchall()
        t_fetch = time.perf_counter() - t0
        con.close()
    else:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as con:
            con.execute("DROP TABLE IF EXISTS plain_matches, plain_accounts")
            con.execute(
                "CREATE TABLE plain_accounts (id bigserial PRIMARY KEY, side smallint,"
                " domain text, local_id text, name text, owner_email text)"
            )
            with (
                con.cursor() as cur,
                cur.copy(
                    "COPY plain_accounts (side, domain, local_id, name, owner_email) FROM STDIN"
                ) as copy,
            ):
                for side, rows in enumerate(sides):
                    for r in rows:
                        copy.write_row((side, *r))
            con.execute("CREATE INDEX plain_accounts_domain ON plain_accounts (side, domain)")
            con.execute("ANALYZE plain_accounts")
            con.commit()
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            con.execute(
                "CREATE TABLE plain_matches AS SELECT a.id AS a_id, b.id AS b_id FROM"
                " plain_accounts a JOIN plain_accounts b ON b.side = 1 AND b.domain = a.domain"
                " WHERE a.side = 0"
            )
            con.commit()
            t_join = time.perf_counter() - t0
            t0 = time.perf_counter()
            fetched = con.execute(
                "SELECT a.domain, a.local_id, b.name, b.owner_email FROM plain_matches m"
                " JOIN plain_accounts a ON a.id = m.a_id JOIN plain_accounts b ON b.id = m.b_id"
            ).fetchall()
            t_fetch = time.perf_counter() - t0
            con.execute("DROP TABLE plain_matches, plain_accounts")
            con.commit()
    total = time.perf_counter() - start
    return {
        "read_s": t_read,
        "load_s": t_load,
        "join_s": t_join,
        "fetch_s": t_fetch,
        "total_s": total,
        "records": [len(s) for s in sides],
        "domains": sorted({r[0] for r in fetched}),
        "rss_mb": _maxrss_mb(),
    }


def _worker_psi(spec: dict[str, Any]) -> dict[str, Any]:
    """OpenMined PSI on the normalized domains; plus Blindmap's tokenization for the core."""
    import private_set_intersection.python as psi

    from blindmap import crypto
    from blindmap import sync as bsync

    start = time.perf_counter()
    a = [x.domain for x in bsync.read_accounts(spec["a_csv"], population=POP).accounts[POP]]
    b = [x.domain for x in bsync.read_accounts(spec["b_csv"], population=POP).accounts[POP]]
    t_read = time.perf_counter() - start
    # Blindmap's share of the matching core on the client side: both sides' HMAC tokens
    pa, pb = crypto.generate_private_key(), crypto.generate_private_key()
    keys = crypto.PartnershipKeys.derive(pa, crypto.public_key_bytes(pb), uuid.uuid4())
    tok = keys.tokenizer("domain")
    t0 = time.perf_counter()
    tok.tokens(a)
    tok.tokens(b)
    t_tokens = time.perf_counter() - t0
    server = psi.server.CreateWithNewKey(True)  # A holds the server role
    client = psi.client.CreateWithNewKey(True)  # B asks
    t0 = time.perf_counter()
    setup = server.CreateSetupMessage(1e-9, len(b), a, psi.DataStructure.RAW)
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    request = client.CreateRequest(b)
    t_request = time.perf_counter() - t0
    t0 = time.perf_counter()
    response = server.ProcessRequest(request)
    t_response = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = client.GetIntersection(setup, response)
    t_intersect = time.perf_counter() - t0
    protocol_s = t_setup + t_request + t_response + t_intersect
    return {
        "read_s": t_read,
        "tokens_s": t_tokens,
        "setup_s": t_setup,
        "request_s": t_request,
        "response_s": t_response,
        "intersect_s": t_intersect,
        "protocol_s": protocol_s,
        "total_s": t_read + protocol_s,
        "bytes": {
            "setup": len(setup.SerializeToString()),
            "request": len(request.SerializeToString()),
            "response": len(response.SerializeToString()),
        },
        "domains": sorted({b[i] for i in found}),
        "rss_mb": _maxrss_mb(),
    }


WORKERS = {
    "sync": _worker_sync,
    "report": _worker_report,
    "plain": _worker_plain,
    "plain_read": _worker_plain_read,
    "psi": _worker_psi,
}


_clients_cpu = [0.0]  # CPU-s of every worker process so far (and of what each waited for)
_clients_lock = threading.Lock()  # workers run from two threads at once (--sides together)


def run_worker(mode: str, **spec: Any) -> dict[str, Any]:
    """Run one worker in a fresh process; its last stdout line is the JSON result.

    `cpu_s` in it is the process's user + system CPU from os.wait4's rusage (with the
    processes it waited for: sync's normalizing pool): the worker's alone, where the
    harness's RUSAGE_CHILDREN would also take in the escrow once it is stopped."""
    # The spec (API keys, private keys) goes in on stdin: a command line is visible to
    # every user of the machine in `ps`.
    cmd = [sys.executable, "-m", "bench.bench_e2e", "--worker", mode]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=out, stderr=err, text=True
        )
        cpu: float | None = None
        try:
            assert proc.stdin is not None
            with proc.stdin:
                proc.stdin.write(json.dumps(spec))
            if hasattr(os, "wait4"):
                _, status, ru = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                cpu = ru.ru_utime + ru.ru_stime
            else:
                proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n{stderr[-4000:]}")
    res = dict(json.loads(stdout.strip().splitlines()[-1]))
    res["cpu_s"] = cpu
    if cpu is not None:
        with _clients_lock:
            _clients_cpu[0] += cpu
    return res


# ------------------------------------------------------------------------ CPU-seconds


@functools.cache
def _pg_pid() -> int | None:
    return bi.pg_server_pid(bi._pg_admin())


class _CpuSpent:
    """CPU-seconds spent from construction to :meth:`stop`, by who spent them:

    - clients: the worker processes that ended in between (run_worker's os.wait4), the
      two companies' syncs and the report, or the plaintext baseline's readers and loader;
    - escrow: the server's process tree (utime + stime + cutime + cstime from /proc);
    - postgres: the whole PostgreSQL server (bi.pg_server_cpu_s: every database's
      backends and the shared background processes); None on SQLite or where /proc does
      not show it;
    - bench: this harness (polling the status, the report worker's parent);
    - busy, idle (and steal, in busy): the machine's, from /proc/stat.

    On N CPUs, busy + idle ≈ N x wall: what the run's wall clock can at best shrink to is
    (clients + escrow + postgres) / N.
    """

    def __init__(self, url: str, server: Server | None = None) -> None:
        self.server = server
        self.pg = _pg_pid() if url.startswith("postgresql") else None
        self._t0 = self._snap()

    def _snap(self) -> dict[str, float | None]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        m = bi.machine_cpu_s()
        with _clients_lock:
            clients = _clients_cpu[0]
        return {
            "clients": clients,
            "escrow": (
                sum(bi.proc_cpu_s(p, reaped=True) for p in bi.process_tree(self.server.proc.pid))
                if self.server is not None
                else 0.0
            ),
            "postgres": bi.pg_server_cpu_s(self.pg) if self.pg is not None else None,
            "bench": me.ru_utime + me.ru_stime,
            "busy": m.busy if m else None,
            "idle": m.idle if m else None,
            "steal": m.steal if m else None,
            "wall": time.perf_counter(),
        }

    def stop(self) -> dict[str, float | None]:
        t1, out = self._snap(), {}
        for k, v in self._t0.items():
            w = t1[k]
            out[k] = w - v if v is not None and w is not None else None
        return out


# ---------------------------------------------------------------------- Blindmap


def _server_env() -> dict[str, str]:
    return {
        "BLINDMAP_REVEAL_BUDGET_PER_DAY": str(10**9),
        "BLINDMAP_RATE_LIMIT_ENABLED": "false",
    }


class Server(bi.Server):
    """bench_ingest's server with the report budget and rate limit out of the way."""

    def __init__(self, url: str, workers: int = 1) -> None:
        old = dict(os.environ)
        os.environ.update(_server_env())
        try:
            super().__init__(url, 10_000, workers)
        finally:
            os.environ.clear()
            os.environ.update(old)


def setup_partnership(http: httpx.Client, keys: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Key pairs, the partnership and co-sell policies; returns (pid, slug -> private hex)."""
    from blindmap import crypto
    from blindmap.policy import load_template

    h = {slug: {"Authorization": f"Bearer {k}"} for slug, k in keys.items()}
    privs = {}
    for slug in keys:
        priv = crypto.generate_private_key()
        privs[slug] = crypto.private_key_bytes(priv).hex()
        pub = crypto.encode_public_key(crypto.public_key_bytes(priv))
        bi._ok(http.put("/v1/me/public-key", json={"public_key": pub}, headers=h[slug]))
    p = bi._ok(http.post("/v1/partnerships", json={"partner": "globex"}, headers=h["acme"]), 201)
    pid = str(p["id"])
    bi._ok(http.post(f"/v1/partnerships/{pid}/accept", headers=h["globex"]))
    policy = load_template("co-sell").model_dump(mode="json")
    for slug in keys:
        bi._ok(http.put(f"/v1/partnerships/{pid}/policy", json=policy, headers=h[slug]))
    return pid, privs


def run_blindmap(
    db: str,
    a_csv: Path,
    b_csv: Path,
    truth: set[str],
    *,
    together: bool = False,
    server_workers: int = 1,
    resync: bool = False,
) -> dict[str, Any]:
    resynced: dict[str, Any] | None = None
    with bi.scratch_database(db) as url:
        keys = bi.make_companies(url)
        server = Server(url, server_workers)
        state = tempfile.mkdtemp(prefix="blindmap-e2e-")
        try:
            with httpx.Client(base_url=server.base, timeout=600) as http:
                pid, privs = setup_partnership(http, keys)
                spent = _CpuSpent(url, server)
                cpu0 = server.cpu_s()
                t_start = time.perf_counter()

                def sync_side(slug: str, csv_path: Path) -> dict[str, Any]:
                    return run_worker(
                        "sync",
                        base_url=server.base,
                        api_key=keys[slug],
                        private_key=privs[slug],
                        csv=str(csv_path),
                        state_dir=f"{state}/{slug}",
                    )

                sides = (("acme", a_csv), ("globex", b_csv))
                if together:  # two companies, two machines: neither waits for the other
                    with ThreadPoolExecutor(2) as pool:
                        futs = {slug: pool.submit(sync_side, slug, p) for slug, p in sides}
                        side = {slug: f.result() for slug, f in futs.items()}
                else:
                    side = {slug: sync_side(slug, p) for slug, p in sides}
                t_synced = time.perf_counter()
                cpu_sync = server.cpu_s() - cpu0
                # until both companies' match jobs are done: the one that joined the pair
                # may be either (a report planned before it committed would be refused)
                waits = [bi.wait_match(http, keys[slug], pid, 600) for slug in ("globex", "acme")]
                match_wall = None if None in waits else time.perf_counter() - t_synced
                t_matched, w_matched = time.perf_counter(), time.time()
                rep = run_worker(
                    "report",
                    base_url=server.base,
                    api_key=keys["acme"],
                    private_key=privs["acme"],
                    pid=pid,
                )
                # from the harness's clock to the end of the worker's reports: its start
                # and imports count, the check of its result against the truth does not
                report_s = rep.pop("ended_at") - w_matched
                hwm = server.hwm_mb()
                cpu_total = server.cpu_s() - cpu0
                cpu = spent.stop()
                # read before any re-sync, which replaces A's list and adds a match job
                matched, _last_job = bi.count_matches(url, pid)
                # Each commit queues a match job. When both lists are committed before the
                # first runs, it joins the pair and the second finds it done; otherwise the
                # first finds no partner list and the second joins. The longest job is the
                # one that joined (with any wait for the other commit's row lock: it errs on
                # the slow side).
                match_jobs = bi.match_job_times(url)
                match_job = max(match_jobs, default=None)
                if resync:
                    resynced = run_resync(
                        http, server, url, keys["acme"], privs["acme"], pid, a_csv, state
                    )
        finally:
            server.stop()
            import shutil

            shutil.rmtree(state, ignore_errors=True)
    got = set(rep.pop("domains"))
    if got != truth:
        raise SystemExit(
            f"[{db}] Blindmap's overlap differs from the ground truth: {len(got)} found, "
            f"{len(truth)} expected, {len(got - truth)} extra, {len(truth - got)} missing"
        )
    a, b = side["acme"], side["globex"]
    return {
        "sync_a": a,
        "sync_b": b,
        "sync_s": t_synced - t_start,
        "match_job_s": match_job,
        "match_jobs_s": match_jobs,
        "match_wall_s": match_wall if match_wall is not None else float("inf"),
        "after_sync_s": t_matched - t_synced,
        "report": rep,
        "report_s": report_s,
        "total_s": t_matched - t_start + report_s,
        "matches": matched,
        "overlap": len(got),
        "server_rss_mb": hwm,
        "server_cpu_sync_s": cpu_sync,
        "server_cpu_total_s": cpu_total,
        "client_rss_mb": max(a["rss_mb"], b["rss_mb"], rep["rss_mb"]),
        "cpu": cpu,
        **({"resync": resynced} if resynced is not None else {}),
    }


def run_resync(
    http: httpx.Client,
    server: Server,
    url: str,
    api_key: str,
    private_key: str,
    pid: str,
    csv_path: Path,
    state: str,
    timeout: float = 120,
) -> dict[str, Any]:
    """Company A syncs the same CSV again, as `blindmap sync` re-uploads a list: a new
    upload whose commit replaces A's committed one. Then, from the moment the sync ended,
    polled every 50 ms: until its match job is done (the status endpoint) and until no
    `drop_upload` job (freeing the replaced list's rows after the commit) is queued or
    running (the jobs table)."""
    spent = _CpuSpent(url, server)
    t0 = time.perf_counter()
    s = run_worker(
        "sync",
        base_url=server.base,
        api_key=api_key,
        private_key=private_key,
        csv=str(csv_path),
        state_dir=f"{state}/acme",
    )
    wall = time.perf_counter() - t0
    ended = s.pop("ended_at")  # the worker's exit is not the commit's end: time from here
    h = {"Authorization": f"Bearer {api_key}"}
    match_s = drops_s = None
    with bi._session(url) as session:
        while time.time() - ended < timeout and (match_s is None or drops_s is None):
            if match_s is None:
                st = http.get(f"/v1/partnerships/{pid}/status", headers=h)
                state_now = bi._ok(st)["mine"][0]["match_job"]
                if state_now == "failed":
                    raise RuntimeError("the re-sync's match job failed")
                if state_now == "done":
                    match_s = time.time() - ended
            if drops_s is None and not bi.pending(bi.jobs_by_status(session, "drop_upload")):
                drops_s = time.time() - ended
            time.sleep(0.05)
        drops = bi.jobs_by_status(session, "drop_upload")
    cpu = spent.stop()
    return {
        "sync": s,
        "sync_s": s["total_s"],
        "commit_s": s["commit_s"],
        "worker_wall_s": wall,
        "match_done_s": match_s,  # after the sync ended; None: not within the timeout
        # the newest finished match job is the re-sync's once the status says done
        "match_job_s": bi.match_job_times(url)[-1] if match_s is not None else None,
        "drop_jobs": drops,  # status -> count; {} while the service queues none
        "drops_done_s": drops_s if drops else None,
        "cpu": cpu,
    }


def run_plain(
    db: str, a_csv: Path, b_csv: Path, truth: set[str], *, together: bool = False
) -> dict[str, Any]:
    """The incumbents' design on the same data; with `together`, the two companies' CSVs
    are read at the same time (as Blindmap's two syncs are) and handed over as rows."""
    with bi.scratch_database(db) as url, tempfile.TemporaryDirectory() as tmp:
        spent = _CpuSpent(url)
        if together:
            t0 = time.perf_counter()
            outs = [f"{tmp}/a.pickle", f"{tmp}/b.pickle"]
            with ThreadPoolExecutor(2) as pool:
                reads = list(
                    pool.map(
                        lambda a: run_worker("plain_read", csv=str(a[0]), out=a[1]),
                        zip((a_csv, b_csv), outs, strict=True),
                    )
                )
            t_reads = time.perf_counter() - t0
            res = run_worker("plain", url=url, rows_files=outs)
            res["read_s"] += t_reads
            res["total_s"] += t_reads
            res["rss_mb"] = max(res["rss_mb"], *(r["rss_mb"] for r in reads))
        else:
            res = run_worker("plain", url=url, csvs=[str(a_csv), str(b_csv)])
        res["cpu"] = spent.stop()
    got = set(res.pop("domains"))
    if got != truth:
        raise SystemExit(f"[{db}] plaintext overlap {len(got)} != ground truth {len(truth)}")
    res["overlap"] = len(got)
    return res


def run_psi(a_csv: Path, b_csv: Path, truth: set[str]) -> dict[str, Any] | None:
    try:
        import private_set_intersection.python  # noqa: F401
    except ImportError:
        print(
            "  peer PSI skipped: openmined-psi is not installed "
            "(`.venv/bin/pip install -e '.[bench]'` adds it)",
            flush=True,
        )
        return None
    res = run_worker("psi", a_csv=str(a_csv), b_csv=str(b_csv))
    got = set(res.pop("domains"))
    if got != truth:
        raise SystemExit(f"PSI intersection {len(got)} != ground truth {len(truth)}")
    res["overlap"] = len(got)
    return res


# -------------------------------------------------------------------------- main


def _med(runs: list[dict[str, Any]], *path: str) -> float:
    vals = []
    for r in runs:
        x: Any = r
        for p in path:
            x = x[p]
        vals.append(float(x))
    return _median(vals)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench e2e")
    parser.add_argument("--size", default=os.environ.get("SIZE", "100k"), help="10k|100k|1m|N")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer-runs", type=int, default=None, help="default: --runs (1 at 1M)")
    parser.add_argument("--skip", action="append", default=[], choices=("plain", "psi"))
    parser.add_argument(
        "--sides",
        choices=("together", "one-after-the-other"),
        default="together",
        help="the two companies' syncs at the same time (as on two machines) or in turn",
    )
    parser.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="uvicorn worker processes of the escrow (blindmap-server serve --workers)",
    )
    parser.add_argument(
        "--resync",
        action="store_true",
        help="after each Blindmap run's reports, company A syncs the same CSV again (a "
        "re-sync replacing its list): that sync, its match job and the clean-up jobs",
    )
    parser.add_argument("--json", dest="json_out", help="also write all results here")
    args = parser.parse_args(argv)
    n = _parse_size(args.size)
    peer_runs = (
        args.peer_runs if args.peer_runs is not None else (1 if n >= 1_000_000 else args.runs)
    )
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in dbs and (why := bi.pg_unavailable()):
        print(f"  PostgreSQL not reachable ({why}): skipping it", flush=True)
        dbs.remove("postgresql")
    a_csv, b_csv, truth = make_data(n)
    print(
        f"  e2e: {n:,} accounts per side, {OVERLAP:.0%} overlap ({len(truth):,} shared "
        f"domains in the ground truth); {os.cpu_count()} CPUs; escrow workers "
        f"{args.server_workers}; load {_load()}",
        flush=True,
    )
    out: dict[str, Any] = {"rows": n, "truth": len(truth), "dbs": {}}
    for db in dbs:
        bl, pl = [], []
        for i in range(args.runs):
            load = _load()
            r = run_blindmap(
                db,
                a_csv,
                b_csv,
                truth,
                together=args.sides == "together",
                server_workers=args.server_workers,
                resync=args.resync,
            )
            r["load"] = load
            bl.append(r)
            a, b = r["sync_a"], r["sync_b"]
            print(
                f"  [{db}] blindmap run {i + 1}: total {r['total_s']:.1f} s = sync A "
                f"{a['total_s']:.1f} (read {a['read_s']:.1f}, build {a['build_s']:.1f} ∥ send "
                f"{a['send_s']:.1f} = {a['build_send_s']:.1f}, commit {a['commit_s']:.2f}) + "
                f"sync B {b['total_s']:.1f} (read {b['read_s']:.1f}, build {b['build_s']:.1f} ∥ "
                f"send {b['send_s']:.1f} = {b['build_send_s']:.1f}) "
                f"+ match {r['after_sync_s']:.2f} (jobs "
                f"{' + '.join(f'{j:.2f}' for j in r['match_jobs_s'])}) + reports "
                f"{r['report_s']:.1f} (pages fetched and decrypted {r['report']['pages_s']:.1f}); "
                f"overlap {r['overlap']:,} = truth; RSS server "
                f"{r['server_rss_mb']:.0f} MB, client {r['client_rss_mb']:.0f} MB; server CPU "
                f"{r['server_cpu_total_s']:.1f} s; load {load}",
                flush=True,
            )
            if "resync" in r:
                print(f"  [{db}] {_resync_text(r['resync'])}", flush=True)
            if "plain" not in args.skip:
                load = _load()
                p = run_plain(db, a_csv, b_csv, truth, together=args.sides == "together")
                p["load"] = load
                pl.append(p)
                print(
                    f"  [{db}] plaintext run {i + 1}: total {p['total_s']:.1f} s = read+normalize "
                    f"{p['read_s']:.1f} + load {p['load_s']:.1f} + join {p['join_s']:.2f} + "
                    f"fetch {p['fetch_s']:.2f}; overlap {p['overlap']:,}; RSS "
                    f"{p['rss_mb']:.0f} MB; load {load}",
                    flush=True,
                )
        out["dbs"][db] = {"blindmap": bl, "plain": pl}
    ps = []
    if "psi" not in args.skip:
        for i in range(peer_runs):
            load = _load()
            r = run_psi(a_csv, b_csv, truth)
            if r is None:
                break
            r["load"] = load
            ps.append(r)
            print(
                f"  [psi] run {i + 1}: total {r['total_s']:.1f} s = read+normalize "
                f"{r['read_s']:.1f} + protocol {r['protocol_s']:.1f} (setup {r['setup_s']:.1f}, "
                f"request {r['request_s']:.1f}, response {r['response_s']:.1f}, intersect "
                f"{r['intersect_s']:.1f}); bytes {sum(r['bytes'].values()) / 1e6:.1f} MB; "
                f"Blindmap tokens of both sides {r['tokens_s']:.2f} s; load {load}",
                flush=True,
            )
    out["psi"] = ps
    summarize(out, n)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))


def _resync_text(rs: dict[str, Any]) -> str:
    def at(x: float | None) -> str:
        return f"at {x:.2f} s" if x is not None else "NOT within 120 s"

    drops = rs["drop_jobs"]
    if not drops:
        drop_text = "no drop_upload jobs queued"
    else:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))
        drop_text = f"drop_upload jobs ({counts}) all finished {at(rs['drops_done_s'])}"
    job = rs["match_job_s"]
    return (
        f"re-sync A (same CSV): sync {rs['sync_s']:.2f} s (commit {rs['commit_s']:.2f} s); "
        f"counting from its end: its match job done {at(rs['match_done_s'])}"
        + (f" (the job ran {job:.2f} s)" if job is not None else "")
        + f", {drop_text}"
    )


def summarize(out: dict[str, Any], n: int) -> None:
    ps = out["psi"]
    psi_total = _med(ps, "total_s") if ps else None
    psi_core = _med(ps, "protocol_s") if ps else None
    tokens_s = _med(ps, "tokens_s") if ps else None
    print(f"\n  e2e medians, {n:,} x {n:,} accounts, {OVERLAP:.0%} overlap:")
    header = (
        "| database | system | end to end | stages (medians) | records/s | peak RSS | "
        "vs plaintext | vs PSI | runs |"
    )
    print(header)
    print("|---|---|---:|---|---:|---|---:|---:|---|")
    for db, res in out["dbs"].items():
        bl, pl = res["blindmap"], res["plain"]
        tot = _med(bl, "total_s")
        recs = bl[0]["sync_a"]["records"] + bl[0]["sync_b"]["records"]
        plain_tot = _med(pl, "total_s") if pl else None
        stages = (
            f"sync A {_med(bl, 'sync_a', 'total_s'):.1f} s (read {_med(bl, 'sync_a', 'read_s'):.1f}"
            f", build {_med(bl, 'sync_a', 'build_s'):.1f} ∥ send {_med(bl, 'sync_a', 'send_s'):.1f}"
            f" = {_med(bl, 'sync_a', 'build_send_s'):.1f})"
            f"; sync B {_med(bl, 'sync_b', 'total_s'):.1f} s; match "
            f"{_med(bl, 'after_sync_s'):.2f} s (job {_med(bl, 'match_job_s'):.2f}); reports "
            f"{_med(bl, 'report_s'):.1f} s"
        )
        ratio_plain = f"{tot / plain_tot:.2f}x" if plain_tot else "—"
        ratio_psi = f"{psi_total / tot:.1f}x faster" if psi_total else "—"
        print(
            f"| {db} | Blindmap | {tot:.1f} s | {stages} | {recs / tot:,.0f} | server "
            f"{_med(bl, 'server_rss_mb'):.0f} MB, client {_med(bl, 'client_rss_mb'):.0f} MB | "
            f"{ratio_plain} | {ratio_psi} | {len(bl)} |"
        )
        if pl:
            stages = (
                f"read+normalize {_med(pl, 'read_s'):.1f} s, load {_med(pl, 'load_s'):.1f} s, "
                f"join {_med(pl, 'join_s'):.2f} s, fetch {_med(pl, 'fetch_s'):.2f} s"
            )
            print(
                f"| {db} | plaintext baseline | {plain_tot:.1f} s | {stages} | "
                f"{recs / plain_tot:,.0f} | {_med(pl, 'rss_mb'):.0f} MB | 1 | — | {len(pl)} |"
            )
        if tokens_s is not None and psi_core:
            core = tokens_s + _med(bl, "match_job_s")
            print(
                f"| {db} | matching core | Blindmap {core:.2f} s (tokens {tokens_s:.2f} + job "
                f"{_med(bl, 'match_job_s'):.2f}) vs PSI protocol {psi_core:.1f} s | | | | | "
                f"{psi_core / core:.0f}x | |"
            )
    if ps:
        b = ps[0]["bytes"]
        print(
            f"| — | OpenMined PSI | {psi_total:.1f} s | read+normalize "
            f"{_med(ps, 'read_s'):.1f} s, protocol {psi_core:.1f} s (setup "
            f"{_med(ps, 'setup_s'):.1f}, request {_med(ps, 'request_s'):.1f}, response "
            f"{_med(ps, 'response_s'):.1f}, intersect {_med(ps, 'intersect_s'):.1f}); "
            f"{sum(b.values()) / 1e6:.1f} MB exchanged | {2 * n / psi_total:,.0f} | "
            f"{_med(ps, 'rss_mb'):.0f} MB | | 1 | {len(ps)} |"
        )
    summarize_cpu(out)


def _med_opt(runs: list[dict[str, Any]], *path: str) -> float | None:
    """The median, or None when a run lacks the figure (a /proc that could not be read)."""
    vals = []
    for r in runs:
        x: Any = r
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        if x is None:
            return None
        vals.append(float(x))
    return _median(vals) if vals else None


def _cpu_rest(cpu: dict[str, float | None], sqlite: bool) -> float | None:
    """The machine's busy time nobody above accounts for: this harness, interrupts
    (loopback TCP), steal, neighbours."""
    parts = (cpu["clients"], cpu["escrow"], 0.0 if sqlite else cpu["postgres"], cpu["busy"])
    if any(x is None for x in parts):
        return None
    clients, escrow, pg, busy = (float(x or 0) for x in parts)
    return busy - clients - escrow - pg


def summarize_cpu(out: dict[str, Any]) -> None:
    """Medians of each run's CPU-seconds (_CpuSpent): can the wall clock shrink further?"""
    cpus = os.cpu_count() or 1
    rows = []
    for db, res in out["dbs"].items():
        if not res["blindmap"]:
            continue
        first = res["blindmap"][0]
        recs = first["sync_a"]["records"] + first["sync_b"]["records"]
        for system, runs in (("Blindmap", res["blindmap"]), ("plaintext baseline", res["plain"])):
            if runs and all("cpu" in r for r in runs):
                rows.append((db, system, runs, recs))
    if not rows:
        return
    print(
        f"\n  CPU-seconds over each run (medians): clients = the client processes, escrow ="
        f" the server's process tree, PostgreSQL = the whole server; machine busy + idle ≈ "
        f"{cpus} CPUs x wall; rest = busy - clients - escrow - PostgreSQL (this harness, "
        "interrupts, steal, neighbours); per record: (clients + escrow + PostgreSQL) / records"
    )
    print(
        "| database | system | wall | clients | escrow | PostgreSQL | rest | machine busy | "
        "machine idle | CPU per record | runs |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def cs(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} s"

    for db, system, runs, recs in rows:
        sqlite = db == "sqlite"
        per_run = []
        for r in runs:
            c = r["cpu"]
            pg = 0.0 if sqlite else c["postgres"]
            own = None if pg is None else c["clients"] + c["escrow"] + pg
            per_run.append({"rest": _cpu_rest(c, sqlite), "own": own})
        own = _med_opt(per_run, "own")
        print(
            f"| {db} | {system} | {cs(_med_opt(runs, 'cpu', 'wall'))} | "
            f"{cs(_med_opt(runs, 'cpu', 'clients'))} | "
            f"{cs(_med_opt(runs, 'cpu', 'escrow')) if system == 'Blindmap' else '—'} | "
            f"{'—' if sqlite else cs(_med_opt(runs, 'cpu', 'postgres'))} | "
            f"{cs(_med_opt(per_run, 'rest'))} | {cs(_med_opt(runs, 'cpu', 'busy'))} | "
            f"{cs(_med_opt(runs, 'cpu', 'idle'))} | "
            f"{'n/a' if own is None else f'{own / recs * 1e6:.1f} µs'} | {len(runs)} |"
        )
    for db, res in out["dbs"].items():
        rs = [r["resync"] for r in res["blindmap"] if "resync" in r]
        if rs:
            print(f"  [{db}] re-sync medians of {len(rs)}: {_resync_text(_resync_median(rs))}")


def _resync_median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs that have the figure (a wait that timed out has none)."""

    def med(k: str) -> float | None:
        vals = [float(r[k]) for r in rs if r[k] is not None]
        return _median(vals) if vals else None

    statuses = {st for r in rs for st in r["drop_jobs"]}
    drops = {st: round(_median([r["drop_jobs"].get(st, 0) for r in rs])) for st in statuses}
    out = {k: med(k) for k in ("sync_s", "commit_s", "match_done_s", "match_job_s")}
    return {
        **out,
        "drop_jobs": {k: v for k, v in drops.items() if v},
        "drops_done_s": med("drops_done_s"),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        mode, spec = sys.argv[2], json.loads(sys.stdin.read())
        print(json.dumps(WORKERS[mode](spec)), flush=True)
    else:
        main(sys.argv[1:])
