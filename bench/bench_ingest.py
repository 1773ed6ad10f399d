"""Server ingest and matching (`python -m bench ingest --rows 1000000 --db both`).

Issue 5, item 6: two partnered companies each upload N records (default 1,000,000; 20% of
B's tokens are also in A's list) to a real `blindmap-server serve` subprocess on
127.0.0.1, over HTTP (httpx), in binary (default) or NDJSON chunks of `--chunk` records;
then each commits and the embedded worker runs the match job. Measured:

- ingest records/s: 2N records over the wall clock of both sides' chunk PUTs plus both
  commits (the commit does ingest work: on SQLite it moves the staged tokens into the
  indexed table, on both it checks refs); the PUT rate alone is printed too. PUTs go one
  at a time, or `--inflight k` at once (the pipelined SDK keeps 2); the client builds
  every chunk before the clock starts;
- commit time (the POST .../commit);
- match job time: from the `jobs` row (claimed -> finished) of the second commit, which
  joins 1M x 1M tokens; plus the wall clock from the commit's response until the status
  endpoint reports the job done;
- total matches (read back from the `matches` table; must equal 20% of N);
- server RSS: the server process's peak VmRSS sampled every 20 ms during the uploads, and
  its VmHWM (lifetime peak) at the end, which includes the match;
- CPU per record (the figure to compare on a shared machine, where wall clock depends on
  the neighbours): user + system time of the server process and, on PostgreSQL, of the
  scratch database's backends (read from /proc/<pid>/stat; backends from
  pg_stat_activity), over the PUTs and commits of both sides, divided by 2N. PostgreSQL's
  shared background processes (WAL writer, checkpointer) serve every database on the
  machine and are not counted.

`--together` sends both sides at the same time (each with `--inflight` PUTs
outstanding), as the end-to-end benchmark's two companies do; the rate is then 2N over
the wall clock from the first PUT to the last commit.

Tokens are synthetic 16-byte values (keyed BLAKE2b of the record number) with exactly
the intended overlap, each side's in sorted order as the SDK sends them (docs/protocol.md
§8.2); refs are 32 random-looking hex characters; the sealed payloads are
random bytes of 60-120 bytes each (self and partner), the size of real sealed fields.

Also printed: the 1-minute load average when each run starts (the `built` line) and
ends (`load` in the JSON; the table row gives the median).

Databases: a fresh SQLite file in a temporary directory; a scratch PostgreSQL database
at 127.0.0.1:5432 as user postgres (created and dropped; skipped with a message when
PostgreSQL is not reachable, so `make bench` never fails for lack of it).
Targets: ingest >= 100k records/s on PostgreSQL and >= 50k/s on SQLite, match 1M x 1M
<= 5 s, server RSS < 300 MB during the upload.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from blindmap import crypto
from blindmap.normalize import NORMALIZER_VERSION

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-key-0123456789abcdef0123456789"
PG_HOST = os.environ.get("BLINDMAP_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BLINDMAP_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BLINDMAP_BENCH_PG_USER", "postgres")
SEALED_FIELDS = ["name", "owner_email", "stage"]
OVERLAP = 0.2


# --------------------------------------------------------------------------- data


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _token(side_key: bytes, i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16, key=side_key).digest()


def side_tokens(side: str, n: int) -> list[bytes]:
    """A: n distinct tokens. B: 20% of them are A's tokens (every 5th), the rest its own.

    Sorted, as the SDK sends an upload's records (docs/protocol.md §8.2)."""
    a_key, b_key = b"bench-side-a", b"bench-side-b"
    if side == "a":
        return sorted(_token(a_key, i) for i in range(n))
    shared = round(n * OVERLAP)
    step = max(1, n // shared) if shared else 1
    toks = [_token(a_key, i * step) for i in range(shared)]
    toks += [_token(b_key, i) for i in range(shared, n)]
    return sorted(toks)


def build_chunks(side: str, n: int, chunk: int, fmt: str = "ndjson") -> list[bytes]:
    """NDJSON or binary chunk bodies for one side, byte-for-byte what the SDK would send."""
    if fmt == "binary":
        return build_binary_chunks(side, n, chunk)
    rng = random.Random(side)
    ref_key = b"bench-ref-" + side.encode()
    toks = side_tokens(side, n)
    chunks: list[bytes] = []
    for start in range(0, n, chunk):
        lines = []
        for i in range(start, min(start + chunk, n)):
            ref = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16, key=ref_key).hexdigest()
            s = rng.randbytes(rng.randint(60, 120))
            p = rng.randbytes(rng.randint(60, 120))
            lines.append(
                f'{{"ref":"{ref}","tokens":[{{"kind":"domain","value":"{_b64(toks[i])}"}}],'
                f'"self":"{_b64(s)}","partner":"{_b64(p)}"}}\n'
            )
        chunks.append("".join(lines).encode("ascii"))
    return chunks


def build_binary_chunks(side: str, n: int, chunk: int) -> list[bytes]:
    """The same records as :func:`build_chunks`, in the binary format (§8.3)."""
    from blindmap.sync import binary_chunk_body, encode_binary_record

    rng = random.Random(side)
    ref_key = b"bench-ref-" + side.encode()
    toks = side_tokens(side, n)
    chunks: list[bytes] = []
    for start in range(0, n, chunk):
        recs = []
        for i in range(start, min(start + chunk, n)):
            ref = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16, key=ref_key).hexdigest()
            s = rng.randbytes(rng.randint(60, 120))
            p = rng.randbytes(rng.randint(60, 120))
            recs.append(encode_binary_record(ref, [("domain", toks[i])], s, p))
        chunks.append(binary_chunk_body(recs))
    return chunks


def digest(chunks: list[bytes]) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()


# ---------------------------------------------------------------------- databases


def _pg_admin() -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout=3"


def pg_unavailable() -> str | None:
    import psycopg

    try:
        with psycopg.connect(_pg_admin(), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


def pg_version() -> str:
    import psycopg

    with psycopg.connect(_pg_admin(), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


@contextmanager
def scratch_database(db: str) -> Iterator[str]:
    """A migrated, empty database URL; removed afterwards."""
    from service.db import migrate

    if db == "sqlite":
        tmp = tempfile.mkdtemp(prefix="blindmap-bench-")
        try:
            url = f"sqlite:///{tmp}/blindmap.db"
            migrate(url)
            yield url
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    import psycopg

    name = f"blindmap_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_admin(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
        migrate(url)
        yield url
    finally:
        with psycopg.connect(_pg_admin(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _settings(url: str) -> Any:
    from service.config import Settings

    return Settings(env="prod", secret_key=SECRET, database_url=url)


def make_companies(url: str) -> dict[str, str]:
    """Two companies through the service layer; returns slug -> admin key."""
    from service.company import service as companies
    from service.db import make_engine, make_sessionmaker

    settings = _settings(url)
    engine = make_engine(settings)
    out = {}
    try:
        with make_sessionmaker(engine).begin() as s:
            for slug, name in (("acme", "Acme Analytics"), ("globex", "Globex Cloud")):
                _, key = companies.create(
                    s, slug=slug, display_name=name, secret=settings.hmac_secret
                )
                out[slug] = key
    finally:
        engine.dispose()
    return out


def count_matches(url: str, pid: str) -> tuple[int, float | None]:
    """Rows in `matches` for the partnership, and the last match job's run time."""
    from sqlalchemy import func, select

    from service.models import Job, matches

    with _session(url) as s:
        n = s.execute(
            select(func.count())
            .select_from(matches)
            .where(matches.c.partnership_id == uuid.UUID(pid))
        ).scalar_one()
        job = s.execute(
            select(Job).where(Job.kind == "match").order_by(Job.id.desc()).limit(1)
        ).scalar_one()
        return int(n), _job_seconds(job)


def match_job_times(url: str) -> list[float]:
    """Run time of every finished match job, oldest first (each commit queues one)."""
    from sqlalchemy import select

    from service.models import Job

    with _session(url) as s:
        jobs = s.execute(select(Job).where(Job.kind == "match").order_by(Job.id)).scalars()
        return [t for t in map(_job_seconds, jobs) if t is not None]


def jobs_by_status(session: Any, kind: str) -> dict[str, int]:
    """How many jobs of `kind` are in each status (a session of `_session`, polled)."""
    from sqlalchemy import func, select

    from service.models import Job

    rows = session.execute(
        select(Job.status, func.count()).where(Job.kind == kind).group_by(Job.status)
    ).all()
    session.rollback()  # end the read: on SQLite a transaction holds the write lock
    return {str(status): int(n) for status, n in rows}


def pending(counts: dict[str, int]) -> int:
    """Jobs still to run in a `jobs_by_status` answer."""
    return counts.get("queued", 0) + counts.get("running", 0)


def _job_seconds(job: Any) -> float | None:
    if job.finished_at and job.locked_at:
        return float((job.finished_at - job.locked_at).total_seconds())
    return None


@contextmanager
def _session(url: str) -> Iterator[Any]:
    """A session on the benchmark database, its engine disposed afterwards."""
    from service.db import make_engine, make_sessionmaker

    engine = make_engine(_settings(url))
    try:
        with make_sessionmaker(engine)() as s:
            yield s
    finally:
        engine.dispose()


# ------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_ticks(pid: int) -> list[int] | None:
    """utime, stime, cutime, cstime of a process in clock ticks (None: gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ")"
    except OSError:
        return None
    return [int(x) for x in fields[11:15]]


def proc_cpu_s(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone); with `reaped`,
    plus those of the children it has waited for (cutime + cstime)."""
    t = _stat_ticks(pid)
    if t is None:
        return 0.0
    return sum(t if reaped else t[:2]) / _TICK


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Live children of a process (each thread's: a child belongs to the thread that
    forked it)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        out = []
        for tid in tasks:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        return out
    except OSError:  # gone, or a kernel without CONFIG_PROC_CHILDREN: every parent then
        pass
    out = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def pg_server_pid(conn_or_url: Any) -> int | None:
    """The postmaster's pid: the parent of this connection's backend, when PostgreSQL runs
    on this machine and /proc shows it (None: SQLite, PostgreSQL elsewhere or unreadable).

    `conn_or_url` is a psycopg connection, a database URL or a libpq connection string."""
    import psycopg

    if isinstance(conn_or_url, str):
        if conn_or_url.startswith("sqlite"):
            return None
        try:
            dsn = conn_or_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                return pg_server_pid(conn)
        except psycopg.Error:
            return None
    row = conn_or_url.execute("SELECT pg_backend_pid()").fetchone()
    backend = int(row[0]) if row else 0
    # A PostgreSQL in another container (pid namespace) has pids that mean nothing here:
    # both the backend and its parent must be `postgres` processes.
    if _comm(backend) != "postgres":
        return None
    try:
        with open(f"/proc/{backend}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return parent if _comm(parent) == "postgres" else None


def pg_server_cpu_s(pid: int) -> float | None:
    """CPU seconds of the whole PostgreSQL server so far: the postmaster's own, its exited
    children's (cutime + cstime: backends that disconnected) and its live children's
    (backends, WAL writer, checkpointer, autovacuum...; only processes named `postgres`).
    None when /proc does not show the postmaster."""
    if _comm(pid) != "postgres":
        return None
    # children first: one that exits in between is counted twice rather than not at all
    live = [t for c in _children(pid) if _comm(c) == "postgres" and (t := _stat_ticks(c))]
    own = _stat_ticks(pid)
    if own is None:
        return None
    return (sum(own) + sum(t[0] + t[1] for t in live)) / _TICK


class MachineCpu(NamedTuple):
    busy: float  # user, nice, system, irq, softirq, steal
    idle: float  # idle, iowait
    steal: float  # in busy: time the hypervisor gave this machine's CPUs to others


def machine_cpu_s() -> MachineCpu | None:
    """CPU seconds of the whole machine since boot, all CPUs (/proc/stat's `cpu` line;
    guest time is already in user). None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            line = next((x for x in f if x.startswith("cpu ")), "")
    except OSError:
        return None
    v = [int(x) for x in line.split()[1:9]]
    if len(v) < 8:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return MachineCpu(
        (user + nice + system + irq + softirq + steal) / _TICK,
        (idle + iowait) / _TICK,
        steal / _TICK,
    )


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (uvicorn's worker processes under `--workers N`)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def db_backends(url: str) -> list[int]:
    """PIDs of the PostgreSQL backends connected to the scratch database (none: SQLite)."""
    if not url.startswith("postgresql"):
        return []
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_pg_admin(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
        ).fetchall()
    return [int(r[0]) for r in rows]


class CpuMeter:
    """CPU seconds of the server process and of the database's backends between
    :meth:`start` and :meth:`stop` (backends that connect in between count from 0)."""

    def __init__(self, server: Server, url: str) -> None:
        self.server, self.url = server, url
        self.server_s = self.db_s = 0.0

    def start(self) -> None:
        self._srv0 = self.server.cpu_s()
        self._db0 = {pid: proc_cpu_s(pid) for pid in db_backends(self.url)}

    def stop(self) -> None:
        self.server_s += self.server.cpu_s() - self._srv0
        for pid in db_backends(self.url):
            self.db_s += proc_cpu_s(pid) - self._db0.get(pid, 0.0)


class Server:
    """`blindmap-server serve` in a subprocess; its RSS is read from /proc."""

    def __init__(self, url: str, chunk: int, workers: int = 1) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "BLINDMAP_ENV": "prod",
            "BLINDMAP_SECRET_KEY": SECRET,
            "BLINDMAP_DATABASE_URL": url,
            "BLINDMAP_LOG_LEVEL": "WARNING",
            "BLINDMAP_MAX_CHUNK_RECORDS": str(max(chunk, 50_000)),
            # 50k-record chunks are ~17 MB of NDJSON; the default body limit is 8 MB
            "BLINDMAP_MAX_BODY_BYTES": str(max(8 << 20, chunk * 400)),
            # the job worker polls at its default (1 s): a commit wakes it at once, and
            # polling 5x a second cost the escrow ≈ 0.25 CPU-s per 1M x 1M run
        }
        exe = Path(sys.executable).with_name("blindmap-server")
        cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--no-migrate"]
        cmd += ["--workers", str(workers)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become ready in 30 s")

    def rss_mb(self) -> float:
        return sum(_proc_kb(p, "VmRSS") for p in process_tree(self.proc.pid)) / 1024

    def hwm_mb(self) -> float:
        """Peak RSS: the sum of each live process's own peak (with `--workers N`)."""
        return sum(_proc_kb(p, "VmHWM") for p in process_tree(self.proc.pid)) / 1024

    def cpu_s(self) -> float:
        """CPU seconds of the server and its live worker processes."""
        return sum(proc_cpu_s(p) for p in process_tree(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RssSampler:
    """Peak VmRSS of a process, sampled in a thread while the context is open."""

    def __init__(self, server: Server, every: float = 0.02) -> None:
        self.server, self.every, self.peak = server, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_mb())
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss_mb())


# -------------------------------------------------------------------------- run


@dataclass
class SideResult:
    records: int
    ingest_s: float
    commit_s: float
    rss_peak_mb: float
    chunk_s: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / self.ingest_s


def _ok(r: httpx.Response, *codes: int) -> Any:
    if r.status_code not in (codes or (200,)):
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json() if r.content else None


def setup_partnership(http: httpx.Client, keys: dict[str, str]) -> str:
    h = {slug: {"Authorization": f"Bearer {k}"} for slug, k in keys.items()}
    for slug in keys:
        priv = crypto.generate_private_key()
        pub = crypto.encode_public_key(crypto.public_key_bytes(priv))
        _ok(http.put("/v1/me/public-key", json={"public_key": pub}, headers=h[slug]))
    p = _ok(http.post("/v1/partnerships", json={"partner": "globex"}, headers=h["acme"]), 201)
    pid = str(p["id"])
    _ok(http.post(f"/v1/partnerships/{pid}/accept", headers=h["globex"]))
    policy = {
        "default": "hidden",
        "populations": {"customers": {"share": "overlap", "fields": SEALED_FIELDS}},
    }
    for slug in keys:
        _ok(
            http.post(
                "/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=h[slug]
            ),
            201,
        )
        _ok(http.put(f"/v1/partnerships/{pid}/policy", json=policy, headers=h[slug]))
    return pid


def upload_side(
    http: httpx.Client,
    server: Server,
    key: str,
    pid: str,
    chunks: list[bytes],
    n: int,
    fmt: str = "ndjson",
    inflight: int = 1,
) -> SideResult:
    h = {"Authorization": f"Bearer {key}"}
    p = _ok(http.get(f"/v1/partnerships/{pid}", headers=h))
    manifest = {
        "population": "customers",
        "normalizer_version": NORMALIZER_VERSION,
        "token_kinds": ["domain"],
        "sealed_fields": SEALED_FIELDS,
        "key_epochs": {"mine": p["me"]["key_epoch"], "partner": p["partner"]["key_epoch"]},
        "record_count": n,
        "chunk_count": len(chunks),
        "digest": digest(chunks),
    }
    up = _ok(http.post(f"/v1/partnerships/{pid}/uploads", json=manifest, headers=h), 201)
    ctype = "application/vnd.blindmap.chunk+binary" if fmt == "binary" else "application/x-ndjson"
    ch = {**h, "content-type": ctype}
    times: list[float] = []

    def put(i: int) -> None:
        t = time.perf_counter()
        _ok(http.put(f"/v1/uploads/{up['id']}/chunks/{i}", content=chunks[i], headers=ch))
        times.append(time.perf_counter() - t)

    with RssSampler(server) as rss:
        start = time.perf_counter()
        if inflight <= 1:
            for i in range(len(chunks)):
                put(i)
        else:  # like the pipelined SDK: at most `inflight` PUTs outstanding
            with ThreadPoolExecutor(inflight) as pool:
                for f in [pool.submit(put, i) for i in range(len(chunks))]:
                    f.result()
        ingest = time.perf_counter() - start
    t = time.perf_counter()
    done = _ok(http.post(f"/v1/uploads/{up['id']}/commit", headers=h))
    commit = time.perf_counter() - t
    assert done["status"] == "committed", done
    return SideResult(n, ingest, commit, rss.peak, times)


def wait_match(http: httpx.Client, key: str, pid: str, timeout: float) -> float | None:
    """Seconds until my latest upload's match job is done (status endpoint, polled);
    None when it is still running after `timeout` seconds."""
    h = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            st = http.get(f"/v1/partnerships/{pid}/status", headers=h, timeout=120)
        except httpx.TimeoutException:
            continue
        if st.status_code == 200:
            state = st.json()["mine"][0]["match_job"]
            if state == "done":
                return time.perf_counter() - start
            if state == "failed":
                raise RuntimeError("the match job failed")
        time.sleep(0.05)
    return None


def run_once(
    db: str,
    n: int,
    chunk: int,
    match_timeout: float,
    fmt: str = "binary",
    inflight: int = 1,
    together: bool = False,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    chunks_a = build_chunks("a", n, chunk, fmt)
    size = sum(map(len, chunks_a))
    chunks_b = build_chunks("b", n, chunk, fmt) if together else []
    print(
        f"  [{db}] built {len(chunks_a)} {fmt} chunks of {chunk:,} records for side A "
        f"({size / n:.0f} bytes/record){' and B' if together else ''} in "
        f"{time.perf_counter() - t0:.1f} s; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with scratch_database(db) as url:
        keys = make_companies(url)
        server = Server(url, chunk)
        try:
            with httpx.Client(base_url=server.base, timeout=300) as http:
                pid = setup_partnership(http, keys)
                rss_idle = server.rss_mb()
                cpu = CpuMeter(server, url)
                if together:
                    cpu.start()
                    start = time.perf_counter()
                    with ThreadPoolExecutor(2) as pool:
                        fa = pool.submit(
                            upload_side, http, server, keys["acme"], pid, chunks_a, n, fmt,
                            inflight,
                        )  # fmt: skip
                        fb = pool.submit(
                            upload_side, http, server, keys["globex"], pid, chunks_b, n, fmt,
                            inflight,
                        )  # fmt: skip
                        a, b = fa.result(), fb.result()
                    wall = time.perf_counter() - start
                    cpu.stop()
                    del chunks_a, chunks_b
                    wait_match(http, keys["acme"], pid, match_timeout)
                else:
                    cpu.start()
                    a = upload_side(http, server, keys["acme"], pid, chunks_a, n, fmt, inflight)
                    cpu.stop()
                    del chunks_a
                    wait_match(http, keys["acme"], pid, 60)  # A's job: nothing to join yet
                    print(
                        f"  [{db}] A: ingest {a.rate:,.0f} records/s ({a.ingest_s:.1f} s), "
                        f"commit {a.commit_s:.2f} s, server RSS peak {a.rss_peak_mb:.0f} MB",
                        flush=True,
                    )
                    chunks_b = build_chunks("b", n, chunk, fmt)
                    cpu.start()
                    b = upload_side(http, server, keys["globex"], pid, chunks_b, n, fmt, inflight)
                    cpu.stop()
                    del chunks_b
                    wall = a.ingest_s + b.ingest_s + a.commit_s + b.commit_s
                match_wall = wait_match(http, keys["globex"], pid, match_timeout)
                hwm = server.hwm_mb()
        finally:
            server.stop()
        if match_wall is None:
            # Stopping the server leaves its query running in PostgreSQL until the scratch
            # database is dropped (WITH FORCE); SQLite stops with the process.
            matched, match_job = -1, None
        else:
            matched, match_job = count_matches(url, pid)
    expected = round(n * OVERLAP)
    result = {
        "db": db,
        "rows": n,
        "chunk": chunk,
        "format": fmt,
        "inflight": inflight,
        "together": together,
        "load": os.getloadavg()[0],
        "ingest_a": a.rate,
        "ingest_b": b.rate,
        # PUTs alone: side by side they overlap, so the longer side's send is the span
        "ingest": 2 * n / (max(a.ingest_s, b.ingest_s) if together else a.ingest_s + b.ingest_s),
        # the commit moves staged tokens (SQLite) and checks refs: it is part of ingest
        "ingest_commit": 2 * n / wall,
        "chunk_median_ms": sorted(a.chunk_s + b.chunk_s)[len(a.chunk_s)] * 1000,
        "commit_a": a.commit_s,
        "commit_b": b.commit_s,
        "server_us": cpu.server_s / (2 * n) * 1e6,
        "db_us": cpu.db_s / (2 * n) * 1e6,
        "cpu_us": (cpu.server_s + cpu.db_s) / (2 * n) * 1e6,
        "match_job": match_job if match_job is not None else float("inf"),
        "match_wall": match_wall if match_wall is not None else float("inf"),
        "matches": matched,
        "expected": expected,
        "rss_idle": rss_idle,
        "rss_upload": max(a.rss_peak_mb, b.rss_peak_mb),
        "rss_hwm": hwm,
    }
    if match_wall is None:
        match_text = f"match job NOT DONE after {match_timeout:.0f} s (gave up)"
    else:
        match_text = (
            f"match job {match_job or float('nan'):.2f} s (commit -> done seen "
            f"{match_wall:.2f} s), matches {matched:,} "
            f"({'= 20%' if matched == expected else f'EXPECTED {expected:,}'})"
        )
    print(
        f"  [{db}] B: ingest {b.rate:,.0f} records/s ({b.ingest_s:.1f} s), commit "
        f"{b.commit_s:.2f} s, {match_text}, server RSS peak {b.rss_peak_mb:.0f} MB "
        f"upload / {hwm:.0f} MB lifetime",
        flush=True,
    )
    print(
        f"  [{db}] CPU per record over the PUTs and commits: server {result['server_us']:.2f} "
        f"µs + database backends {result['db_us']:.2f} µs = {result['cpu_us']:.2f} µs "
        f"({2 * n / wall:,.0f} records/s incl. commits)",
        flush=True,
    )
    if match_wall is not None and matched != expected:
        raise SystemExit(f"wrong number of matches: {matched} != {expected}")
    return result


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument("--rows", type=int, default=1_000_000, help="records per side")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--chunk", type=int, default=10_000, help="records per chunk")
    parser.add_argument(
        "--format",
        choices=("binary", "ndjson"),
        default="binary",
        help="chunk format (the SDK sends binary)",
    )
    parser.add_argument(
        "--inflight",
        type=int,
        default=1,
        help="chunk PUTs outstanding at once (1 = one at a time; the pipelined SDK sends 2)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="both sides send at the same time (as the end-to-end benchmark's companies do)",
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    parser.add_argument("--quick", action="store_true", help="100k records per side")
    parser.add_argument(
        "--match-timeout", type=float, default=300, help="give up waiting for the match (s)"
    )
    parser.add_argument("--json", dest="json_out", help="also write the results to this file")
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else args.rows
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in dbs and (why := pg_unavailable()):
        print(f"  PostgreSQL at {PG_HOST}:{PG_PORT} not reachable ({why}): skipping it")
        dbs.remove("postgresql")
    import sqlite3

    versions = f"SQLite {sqlite3.sqlite_version}"
    if "postgresql" in dbs:
        versions += f", PostgreSQL {pg_version()}"
    print(
        f"  {n:,} records per side, {OVERLAP:.0%} overlap, chunks of {args.chunk:,}; "
        f"{versions}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for db in dbs:
        runs = [
            run_once(
                db, n, args.chunk, args.match_timeout, args.format, args.inflight, args.together
            )
            for _ in range(args.runs)
        ]
        results += runs
        med = {k: _median([r[k] for r in runs]) for k in runs[0] if isinstance(runs[0][k], float)}
        target = 100_000 if db == "postgresql" else 50_000
        verdicts = [
            (
                "ingest",
                med["ingest_commit"] >= target,
                f"{med['ingest_commit']:,.0f} records/s with the commits, "
                f"{med['ingest']:,.0f}/s chunk PUTs alone (>= {target:,})",
            ),
            ("match", med["match_job"] <= 5, f"{med['match_job']:.2f} s (<= 5 s)"),
            ("rss", med["rss_upload"] < 300, f"{med['rss_upload']:.0f} MB (< 300 MB)"),
        ]
        print(
            f"  [{db}] CPU per record (median): server {med['server_us']:.2f} µs + database "
            f"{med['db_us']:.2f} µs = {med['cpu_us']:.2f} µs"
        )
        runs_note = f"median of {len(runs)} runs" if len(runs) > 1 else "1 run"
        print(f"  [{db}] {runs_note}:")
        for name, met, text in verdicts:
            print(f"    {name:<7} {text}: {'met' if met else 'MISSED'}")
        cells = [
            f"ingest {db}",
            f"{n:,} x {n:,}",
            f"{args.format} chunks {args.chunk:,}, {args.inflight} in flight"
            + (", both sides at once" if args.together else ""),
            f"ingest {med['ingest_commit']:,.0f} rec/s incl. commits "
            f"(PUTs {med['ingest']:,.0f} rec/s)",
            f"commit {med['commit_a']:.2f} / {med['commit_b']:.2f} s",
            f"CPU {med['server_us']:.2f} + {med['db_us']:.2f} µs/record",
            f"match job {med['match_job']:.2f} s",
            f"matches {runs[0]['matches']:,}" if runs[0]["matches"] >= 0 else "matches ?",
            f"RSS upload {med['rss_upload']:.0f} MB / lifetime {med['rss_hwm']:.0f} MB",
            runs_note,
            f"load {_median([r['load'] for r in runs]):.1f}",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
