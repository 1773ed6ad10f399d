"""Load test: one uvicorn worker on loopback, a seeded dataset, a realistic request mix.

    .venv/bin/python -m bench.load --duration 300          # the recorded run (`make load`)
    .venv/bin/python -m bench.load --duration 20 --accounts 5000   # while developing

What it does, and stops by itself:

1. Creates a fresh database (a new database on the PostgreSQL at 127.0.0.1:5432 by
   default, dropped at the end; ``--db sqlite`` for a temporary SQLite file) and two
   companies with admin/uploader/reader keys (operator step, in-process).
2. Starts ``blindmap-server serve`` — one uvicorn worker, embedded job worker, on
   127.0.0.1 and a free port — and seeds it through the HTTP API: public keys, an active
   partnership, the co-sell policy on both sides, and per company ``--accounts`` accounts
   (60% customers, 20% opportunities, 20% prospects) of which ``--overlap`` are shared,
   uploaded as 10k-record chunks with partner-sealed fields; waits for matching.
3. Drives the read mix with **wrk** (``apt-get install wrk``; C, one thread, so the driver
   takes as little as possible of the 2-core machine from the server), through a
   generated Lua script: summary reports 25%, overlaps pages 35% (first pages with and
   without population filters, and deeper pages by cursor), lookups of 10 own tokens
   30%, sync status 10%; both companies' reader keys. Meanwhile a Python thread makes a
   small upload (200 records: stage, one chunk, commit — which also runs a match job in
   the server) every ``--upload-every`` seconds, alternating companies.
4. Prints throughput, p50/p90/p95/p99/max, error counts (wrk's socket errors and non-2xx
   answers; the upload thread's failures) as JSON and a Markdown line for
   docs/reliability.md; ``--out FILE`` keeps the JSON.

Limits raised for the run (and only for it): the daily reveal budget and the daily commit
limit, which a 5-minute flood by two keys would otherwise exhaust by design.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
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
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
SECRET = "load-test-secret-key-0123456789abcdef0123"
PG_ADMIN = os.environ.get(
    "BLINDMAP_LOAD_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
)
CHUNK = 10_000
MIX = {"summary": 25, "overlaps": 35, "lookup": 30, "status": 10}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(account: int) -> bytes:
    """A stand-in 16-byte domain token: one per account, equal on both sides."""
    return hashlib.sha256(f"load-account:{account}".encode()).digest()[:16]


def _sealed(rng: random.Random, n: int) -> str:
    return _b64(rng.randbytes(n))


@dataclass
class Company:
    slug: str
    id: uuid.UUID
    keys: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, list[int]] = field(default_factory=dict)  # population -> account ids

    def h(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


# -- database and companies -----------------------------------------------------------------
def make_database(kind: str, stack: ExitStack) -> str:
    from service.db import migrate

    if kind == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="blindmap-load-"))
        stack.callback(shutil.rmtree, tmp, True)
        url = f"sqlite:///{tmp / 'load.db'}"
    else:
        import psycopg

        name = f"blindmap_load_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        stack.callback(drop)
        params = dict(p.split("=", 1) for p in PG_ADMIN.split())
        user, host, port = params.get("user", "postgres"), params["host"], params["port"]
        url = f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    migrate(url)
    return url


def make_companies(url: str) -> tuple[Company, Company]:
    """The operator's step: two companies, each with an admin, uploader and reader key."""
    from blindmap.protocol import Role
    from service.api_key import service as keys
    from service.company import service as companies
    from service.config import Settings
    from service.db import make_engine, make_sessionmaker
    from service.models import ApiKey

    settings = Settings(env="test", secret_key=SECRET, database_url=url)
    engine = make_engine(settings)
    out = []
    with make_sessionmaker(engine).begin() as s:
        for slug, name in (("acme", "Acme Analytics"), ("globex", "Globex Cloud")):
            company, admin_key = companies.create(
                s, slug=slug, display_name=name, secret=settings.hmac_secret
            )
            c = Company(slug, company.id, {"admin": admin_key})
            admin = s.query(ApiKey).filter_by(company_id=company.id).one()
            for role in (Role.uploader, Role.reader):
                _, plain = keys.issue(
                    s,
                    company_id=company.id,
                    secret=settings.hmac_secret,
                    name=f"load {role.value}",
                    role=role,
                    created_by=admin,
                )
                c.keys[role.value] = plain
            out.append(c)
    engine.dispose()
    return out[0], out[1]


# -- the server -------------------------------------------------------------------------------
class Server:
    def __init__(self, url: str, log: Path, workers: int = 1) -> None:
        self.workers = workers
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "BLINDMAP_ENV": "test",
            "BLINDMAP_SECRET_KEY": SECRET,
            "BLINDMAP_DATABASE_URL": url,
            "BLINDMAP_REVEAL_BUDGET_PER_DAY": str(10**12),
            "BLINDMAP_MAX_COMMITS_PER_DAY": "1000000",
            "BLINDMAP_LOG_LEVEL": "WARNING",
        }

    def __enter__(self) -> Server:
        self._err = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                *(str(BIN / "blindmap-server"), "serve", "--port", str(self.port)),
                *("--no-migrate", "--workers", str(self.workers)),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.__exit__()
        raise SystemExit("the server did not start:\n" + self.log.read_text()[-3000:])

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._err.close()


# -- seeding through the API ------------------------------------------------------------------
def _ok(r: httpx.Response, *codes: int) -> Any:
    if r.status_code not in (codes or (200,)):
        raise SystemExit(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")
    return r.json() if r.content else None


def _records(rng: random.Random, accounts: list[int], sealed: bool) -> list[bytes]:
    lines = []
    for acct in accounts:
        rec = {
            "ref": _b64(hashlib.sha256(f"ref:{acct}:{rng.random()}".encode()).digest()[:16]),
            "tokens": [{"kind": "domain", "value": _b64(_token(acct))}],
            "self": _sealed(rng, 120),
            "partner": _sealed(rng, 90) if sealed else None,
        }
        lines.append(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
    return [b"".join(lines[i : i + CHUNK]) for i in range(0, len(lines), CHUNK)]


def upload(
    http: httpx.Client,
    who: Company,
    pid: str,
    population: str,
    chunks: list[bytes],
    records: int,
    sealed_fields: list[str],
    epochs: dict[str, int],
) -> tuple[str, list[float]]:
    """Stage, send, commit; returns the upload id and each request's latency (s)."""
    from blindmap.normalize import NORMALIZER_VERSION

    h = who.h("uploader")
    digest = hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()
    times = []
    t = time.perf_counter()
    up = _ok(
        http.post(
            f"/v1/partnerships/{pid}/uploads",
            headers=h,
            json={
                "population": population,
                "normalizer_version": NORMALIZER_VERSION,
                "token_kinds": ["domain"],
                "sealed_fields": sealed_fields,
                "key_epochs": epochs,
                "record_count": records,
                "chunk_count": len(chunks),
                "digest": digest,
            },
        ),
        201,
    )
    times.append(time.perf_counter() - t)
    for n, body in enumerate(chunks):
        t = time.perf_counter()
        _ok(
            http.put(
                f"/v1/uploads/{up['id']}/chunks/{n}",
                content=body,
                headers={**h, "content-type": "application/x-ndjson"},
            )
        )
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    _ok(http.post(f"/v1/uploads/{up['id']}/commit", headers=h))
    times.append(time.perf_counter() - t)
    return str(up["id"]), times


def seed(base: str, a: Company, b: Company, accounts: int, overlap: float, seed_: int) -> str:
    from blindmap import crypto
    from blindmap.policy import load_template

    rng = random.Random(seed_)
    http = httpx.Client(base_url=base, timeout=300)
    for c in (a, b):
        pub = crypto.encode_public_key(crypto.public_key_bytes(crypto.generate_private_key()))
        _ok(http.put("/v1/me/public-key", json={"public_key": pub}, headers=c.h()))
    pid = str(
        _ok(http.post("/v1/partnerships", json={"partner": b.slug}, headers=a.h()), 201)["id"]
    )
    _ok(http.post(f"/v1/partnerships/{pid}/accept", headers=b.h()))
    doc = load_template("co-sell").model_dump(mode="json")
    for c in (a, b):
        _ok(http.put(f"/v1/partnerships/{pid}/policy", json=doc, headers=c.h()))
    # account ids: shared ones are equal on both sides; the rest are disjoint
    shared = int(accounts * overlap)
    ids_a = list(range(shared)) + list(range(10**7, 10**7 + accounts - shared))
    ids_b = list(range(shared)) + list(range(2 * 10**7, 2 * 10**7 + accounts - shared))
    split = {"customers": 0.6, "opportunities": 0.2, "prospects": 0.2}
    fields = {
        "customers": ["name", "owner_email"],
        "opportunities": ["name", "owner_email", "stage"],
    }
    for c, ids in ((a, ids_a), (b, ids_b)):
        rng.shuffle(ids)
        start = 0
        for pop, frac in split.items():
            n = int(accounts * frac) if pop != "prospects" else len(ids) - start
            c.accounts[pop] = ids[start : start + n]
            start += n
        for pop in (*split, "events"):
            kind = pop if pop != "events" else "other"
            _ok(http.post("/v1/populations", json={"slug": pop, "kind": kind}, headers=c.h()), 201)
    for c in (a, b):
        p = _ok(http.get(f"/v1/partnerships/{pid}", headers=c.h()))
        epochs = {"mine": p["me"]["key_epoch"], "partner": p["partner"]["key_epoch"]}
        for pop in split:
            sf = fields.get(pop, [])
            chunks = _records(rng, c.accounts[pop], bool(sf))
            upload(http, c, pid, pop, chunks, len(c.accounts[pop]), sf, epochs)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        states = [
            m.get("match_job")
            for c in (a, b)
            for m in _ok(http.get(f"/v1/partnerships/{pid}/status", headers=c.h()))["mine"]
        ]
        if "failed" in states:
            raise SystemExit(f"a match job failed: {states}")
        if states and all(s == "done" for s in states):
            break
        time.sleep(0.5)
    else:
        raise SystemExit("matching did not finish in 10 minutes")
    http.close()
    return pid


# -- the request mix --------------------------------------------------------------------------
def build_requests(
    base: str, a: Company, b: Company, pid: str, rng: random.Random, only: str | None = None
) -> list[tuple]:
    """(kind, method, path, auth header, body) templates, weighted by repetition."""
    http = httpx.Client(base_url=base, timeout=60)
    by_kind: dict[str, list[tuple]] = {k: [] for k in MIX}
    pops = ["customers", "opportunities", "prospects"]
    for c in (a, b):
        auth = f"Bearer {c.keys['reader']}"
        rp = f"/v1/partnerships/{pid}"
        by_kind["summary"].append(("GET", f"{rp}/reports/summary", auth, None))
        by_kind["status"].append(("GET", f"{rp}/status", auth, None))
        # overlaps: first pages (all, and per population pair), then pages reached by cursor
        firsts = [f"{rp}/reports/overlaps?limit=100"] + [
            f"{rp}/reports/overlaps?limit=100&mine={m}&theirs={t}"
            for m in pops[:2]
            for t in pops[:2]
        ]
        by_kind["overlaps"].extend(("GET", p, auth, None) for p in firsts)
        path = firsts[0]
        for _ in range(30):
            page = _ok(http.get(path, headers={"Authorization": auth}))
            if not page["next_cursor"]:
                break
            path = f"{rp}/reports/overlaps?limit=100&cursor={page['next_cursor']}"
            by_kind["overlaps"].append(("GET", path, auth, None))
        # lookups: 10 tokens of my own committed accounts (about 20% of them shared)
        mine = [acct for pop in pops for acct in c.accounts[pop]]
        for _ in range(50):
            toks = [{"kind": "domain", "value": _b64(_token(x))} for x in rng.sample(mine, 10)]
            by_kind["lookup"].append(("POST", f"{rp}/lookup", auth, json.dumps({"tokens": toks})))
    http.close()
    out = []
    for kind, weight in MIX.items():
        if only and kind != only:
            continue
        reqs = by_kind[kind]
        out.extend((kind, *reqs[i % len(reqs)]) for i in range(weight * 20))
    return out


def _lua_str(s: str) -> str:
    return "[==[" + s + "]==]"


LUA_TEMPLATE = r"""
-- generated by bench/load.py: a weighted table of requests, one picked at random each time
local reqs = {
%s
}
local formatted = {}
init = function(args)
  math.randomseed(%d + (tonumber(tostring({}):match("0x(%%x+)"), 16) or 0) %% 100000)
  for i, r in ipairs(reqs) do
    local headers = { ["Authorization"] = r[3], ["Accept"] = "application/json" }
    if r[4] then headers["Content-Type"] = "application/json" end
    formatted[i] = wrk.format(r[1], r[2], headers, r[4])
  end
end
request = function()
  return formatted[math.random(#formatted)]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, "read": %%d,'
    .. ' "write": %%d, "status": %%d, "timeout": %%d, "p50": %%d, "p90": %%d, "p95": %%d,'
    .. ' "p99": %%d, "p999": %%d, "max": %%d, "mean": %%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


def write_lua(reqs: list[tuple], path: Path, seed_: int) -> None:
    rows = ",\n".join(
        "{" + ", ".join(_lua_str(x) if x is not None else "nil" for x in r[1:]) + "}" for r in reqs
    )
    path.write_text(LUA_TEMPLATE % (rows, seed_))


def _cpu_seconds(pids: list[int], which: tuple[int, ...] = (11, 12)) -> float:
    """User + system CPU time consumed so far by these processes (Linux /proc); `which`
    (11,) for user time only, (12,) for system time only."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in which)  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn's workers when --workers > 1)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


def _backend_pids(url: str) -> list[int]:
    """PostgreSQL backends serving the load database (the server's pooled connections)."""
    if not url.startswith("postgresql"):
        return []
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def run_wrk(
    base: str, script: Path, duration: float, connections: int, threads: int
) -> dict[str, Any]:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if res.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    secs = raw["duration_us"] / 1e6
    ms = {k: round(raw[k] / 1000, 2) for k in ("p50", "p90", "p95", "p99", "p999", "max")}
    return {
        "requests": raw["requests"],
        "seconds": round(secs, 1),
        "rps": round(raw["requests"] / secs, 1),
        "latency_ms": {**ms, "mean": round(raw["mean"] / 1000, 2)},
        "errors": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
        "wrk_stdout": res.stdout,
    }


class SmallUploads(threading.Thread):
    """A small upload (200 records) every `every` seconds, alternating companies."""

    def __init__(self, base: str, pid: str, companies: tuple[Company, ...], every: float) -> None:
        super().__init__(daemon=True)
        self.base, self.pid, self.companies, self.every = base, pid, companies, every
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.done = 0
        self.errors: list[str] = []
        self.rng = random.Random(7)

    def run(self) -> None:
        http = httpx.Client(base_url=self.base, timeout=60)
        epochs = {}
        for c in self.companies:
            p = _ok(http.get(f"/v1/partnerships/{self.pid}", headers=c.h()))
            epochs[c.slug] = {"mine": p["me"]["key_epoch"], "partner": p["partner"]["key_epoch"]}
        i = 0
        while not self.stop.wait(self.every):
            c = self.companies[i % len(self.companies)]
            i += 1
            accts = self.rng.sample(c.accounts["customers"], 150) + [
                5 * 10**7 + self.rng.randrange(10**6) for _ in range(50)
            ]
            chunks = _records(self.rng, sorted(set(accts)), False)
            try:
                _, times = upload(
                    http, c, self.pid, "events", chunks, len(set(accts)), [], epochs[c.slug]
                )
            except (SystemExit, httpx.HTTPError) as exc:
                self.errors.append(str(exc)[:300])
                continue
            self.latencies.extend(times)
            self.done += 1
        http.close()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {cpu}, Python {platform.python_version()}, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=300, help="seconds of measured load")
    ap.add_argument("--warmup", type=float, default=10, help="seconds of unmeasured load first")
    ap.add_argument("--accounts", type=int, default=50_000, help="accounts per company")
    ap.add_argument("--overlap", type=float, default=0.2, help="fraction of accounts shared")
    ap.add_argument(
        "--connections",
        type=int,
        default=6,
        help="wrk connections (6: one worker at full throughput; 8 only queues longer)",
    )
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--upload-every", type=float, default=2.0, help="seconds between uploads")
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (the target is for 1)"
    )
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--only", choices=sorted(MIX), help="drive one kind of request only")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--profile", type=Path, help="py-spy record the server here (collapsed stacks)")
    ap.add_argument("--profile-rate", type=int, default=50, help="with --profile: samples/s")
    ap.add_argument(
        "--profile-gil", action="store_true", help="with --profile: only the thread holding the GIL"
    )
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    if args.duration <= 0 or args.duration > 3600:
        raise SystemExit("--duration must be in (0, 3600] seconds")

    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="blindmap-load-run-"))
        stack.callback(shutil.rmtree, tmp, True)
        print(f"[load] database: {args.db}", file=sys.stderr)
        url = make_database(args.db, stack)
        a, b = make_companies(url)
        srv = stack.enter_context(Server(url, tmp / "server.log", args.workers))
        t0 = time.monotonic()
        print(f"[load] seeding {args.accounts} accounts per company …", file=sys.stderr)
        pid = seed(srv.base, a, b, args.accounts, args.overlap, args.seed)
        seed_s = time.monotonic() - t0
        reqs = build_requests(srv.base, a, b, pid, random.Random(args.seed), args.only)
        script = tmp / "mix.lua"
        write_lua(reqs, script, args.seed)
        print(f"[load] seeded in {seed_s:.1f}s; warm-up {args.warmup:.0f}s", file=sys.stderr)
        if args.warmup > 0:
            run_wrk(srv.base, script, args.warmup, args.connections, args.threads)
        uploads = SmallUploads(srv.base, pid, (a, b), args.upload_every)
        uploads.start()
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [str(BIN / "py-spy"), "record", "-p", str(srv.proc.pid), "-o", str(args.profile),
                 "-d", str(int(args.duration)), "-r", str(args.profile_rate), "--nonblocking",
                 "-f", "raw",
                 *(["--gil"] if args.profile_gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        print(f"[load] measuring for {args.duration:.0f}s …", file=sys.stderr)
        backends = _backend_pids(url)
        server_pids = _process_tree(srv.proc.pid)
        sys0 = _cpu_seconds(server_pids, (12,))
        cpu0 = _cpu_seconds(server_pids), _cpu_seconds(backends), time.monotonic()
        result = run_wrk(srv.base, script, args.duration, args.connections, args.threads)
        cpu1 = _cpu_seconds(server_pids), _cpu_seconds(backends), time.monotonic()
        sys1 = _cpu_seconds(server_pids, (12,))
        load_avg = os.getloadavg()[0]
        uploads.stop.set()
        uploads.join(120)
        if spy is not None:
            spy.wait(60)
        alive = srv.proc.poll() is None
        errors_log = [
            ln for ln in (tmp / "server.log").read_text().splitlines() if '"level": "error"' in ln
        ]
    up_ms = [x * 1000 for x in uploads.latencies]
    out = {
        "machine": machine(),
        "database": args.db,
        "accounts_per_company": args.accounts,
        "overlap": args.overlap,
        "mix_percent": MIX,
        "connections": args.connections,
        "workers": args.workers,
        "read_mix": {k: v for k, v in result.items() if k != "wrk_stdout"},
        "small_uploads": {
            "completed": uploads.done,
            "requests": len(up_ms),
            "errors": uploads.errors[:5],
            "error_count": len(uploads.errors),
            "p50_ms": round(_pct(up_ms, 50), 1),
            "p99_ms": round(_pct(up_ms, 99), 1),
        },
        # CPU spent per read request (uploads included in the numerator): less sensitive
        # to other work on a shared machine than the throughput is.
        "cpu_ms_per_request": {
            "server": round((cpu1[0] - cpu0[0]) * 1000 / max(1, result["requests"]), 2),
            "server_system": round((sys1 - sys0) * 1000 / max(1, result["requests"]), 2),
            "postgresql": round((cpu1[1] - cpu0[1]) * 1000 / max(1, result["requests"]), 2),
            "server_cores_busy": round((cpu1[0] - cpu0[0]) / (cpu1[2] - cpu0[2]), 2),
            "postgresql_cores_busy": round((cpu1[1] - cpu0[1]) / (cpu1[2] - cpu0[2]), 2),
        },
        "load_average_1min_at_end": round(load_avg, 2),
        "server_error_log_lines": len(errors_log),
        "server_alive": alive,
        "seed_seconds": round(seed_s, 1),
    }
    total_errors = sum(result["errors"].values()) + len(uploads.errors) + len(errors_log)
    out["errors_total"] = total_errors
    print(json.dumps(out, indent=2))
    lat, cpu = result["latency_ms"], out["cpu_ms_per_request"]
    print(
        f"\n| {args.duration:.0f} s | {args.connections} conn | {result['rps']} req/s | "
        f"p50 {lat['p50']} ms | p95 {lat['p95']} ms | p99 {lat['p99']} ms | "
        f"errors {total_errors} | uploads {uploads.done} | CPU per request: server "
        f"{cpu['server']} ms (system {cpu['server_system']}), PostgreSQL {cpu['postgresql']} ms "
        f"| load average {out['load_average_1min_at_end']} |"
    )
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if total_errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
