"""Shared fixtures.

Every test that asks for `database_url` (directly or through `app`, `session`,
`tenants`...) runs twice: on SQLite and on PostgreSQL at 127.0.0.1:5432. The schema is
built by running the migrations. Outside CI a missing PostgreSQL skips that half with a
message; with CI=true it fails.

Isolation is by emptying every table after each test rather than by wrapping each test
in a rolled-back transaction: the app commits through its own sessions from worker
threads (and later from the job worker), which an outer transaction cannot contain.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

PG_HOST = os.environ.get("BLINDMAP_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BLINDMAP_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("BLINDMAP_TEST_PG_USER", "postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_SECRET = "test-secret-key-0123456789abcdef0123456789"
BACKENDS = ("sqlite", "postgresql")
REPO = Path(__file__).resolve().parent.parent


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any attempt to open a network connection while the test runs."""

    def refuse(*_a: object, **_k: object) -> None:
        raise NetworkBlocked("this code must not open network connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


# -- databases ---------------------------------------------------------------------------
_ran: dict[str, int] = {b: 0 for b in BACKENDS}
_skipped_pg: list[str] = []


def _pg_admin_conninfo() -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout=3"


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    import psycopg

    try:
        with psycopg.connect(_pg_admin_conninfo(), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    """Admin connection string of the test PostgreSQL, or skip/fail as the rules say."""
    reason = _pg_available()
    if reason:
        msg = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {reason}"
        if IN_CI:
            pytest.fail(f"{msg} (CI=true: the PostgreSQL half must run)", pytrace=False)
        _skipped_pg.append(msg)
        pytest.skip(msg + " — skipping the PostgreSQL half (set CI=true to make this fail)")
    return _pg_admin_conninfo()


def create_pg_database(admin_conninfo: str) -> tuple[str, str]:
    import psycopg

    name = f"blindmap_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_pg_database(admin_conninfo: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated, empty database of each backend, one per test session (and worker)."""
    from service.db import migrate

    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "blindmap.db"
        url = f"sqlite:///{path}"
        migrate(url)
        yield url
        return
    admin = request.getfixturevalue("pg_server")
    name, url = create_pg_database(admin)
    try:
        migrate(url)
        yield url
    finally:
        drop_pg_database(admin, name)


@pytest.fixture(scope="session")
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture(scope="session")
def settings(database_url: str):  # type: ignore[no-untyped-def]
    from service.config import Settings

    return Settings(env="test", secret_key=TEST_SECRET, database_url=database_url)


@pytest.fixture(scope="session")
def _app(settings) -> FastAPI:  # type: ignore[no-untyped-def]
    from service.main import create_app

    return create_app(settings)


@pytest.fixture(scope="session")
def engine(_app: FastAPI) -> Engine:
    return _app.state.engine  # type: ignore[no-any-return]


def _empty_all_tables(engine: Engine) -> None:
    from service.models import Base

    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
        else:
            for t in tables:
                conn.execute(text(f'DELETE FROM "{t}"'))


@pytest.fixture
def app(_app: FastAPI, backend: str) -> Iterator[FastAPI]:
    """The app on a database that is empty when the test starts and emptied after it."""
    _ran[backend] += 1
    yield _app
    _empty_all_tables(_app.state.engine)


@pytest.fixture
def session(app: FastAPI) -> Iterator[Session]:
    """A session for arranging and inspecting data directly (commit what you arrange)."""
    with app.state.sessionmaker() as s:
        yield s


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# -- tenants -----------------------------------------------------------------------------
@dataclass
class Tenant:
    slug: str
    id: uuid.UUID
    keys: dict[str, str] = field(default_factory=dict)  # role -> plaintext key
    key_ids: dict[str, uuid.UUID] = field(default_factory=dict)

    def headers(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@dataclass
class Tenants:
    a: Tenant
    b: Tenant


def make_tenant(app: FastAPI, slug: str, name: str) -> Tenant:
    from blindmap.protocol import Role
    from service.api_key import service as keys
    from service.company import service as companies

    secret = app.state.settings.hmac_secret
    with app.state.sessionmaker.begin() as s:
        company, admin_key = companies.create(s, slug=slug, display_name=name, secret=secret)
        tenant = Tenant(slug=slug, id=company.id)
        tenant.keys["admin"] = admin_key
        from service.models import ApiKey

        admin = s.query(ApiKey).filter_by(company_id=company.id).one()
        tenant.key_ids["admin"] = admin.id
        for role in (Role.uploader, Role.reader):
            key, plain = keys.issue(
                s,
                company_id=company.id,
                secret=secret,
                name=f"{role.value} key",
                role=role,
                created_by=admin,
            )
            tenant.keys[role.value] = plain
            tenant.key_ids[role.value] = key.id
    return tenant


@pytest.fixture
def tenants(app: FastAPI) -> Tenants:
    """Two companies, each with an admin, an uploader and a reader key."""
    return Tenants(
        a=make_tenant(app, "acme", "Acme Analytics"), b=make_tenant(app, "globex", "Globex Cloud")
    )


@pytest.fixture
def sdk(client: TestClient, tenants: Tenants):  # type: ignore[no-untyped-def]
    """Factory: the real SDK talking to the real app in-process."""
    import blindmap

    def make(tenant: Tenant, role: str = "admin") -> blindmap.Client:
        return blindmap.Client(tenant.keys[role], base_url="http://testserver", http_client=client)

    return make


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    ran = ", ".join(f"{b}: {n} tests" for b, n in _ran.items())
    if any(_ran.values()):
        terminalreporter.write_line(f"database backends exercised — {ran}")
    for msg in dict.fromkeys(_skipped_pg):
        terminalreporter.write_line(f"SKIPPED the PostgreSQL half: {msg}", yellow=True)


def pytest_sessionfinish(session, exitstatus):  # type: ignore[no-untyped-def]
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the counts to the controller
        workeroutput["backend_counts"] = dict(_ran)
        workeroutput["skipped_pg"] = list(_skipped_pg)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent under -p no:xdist
def pytest_testnodedown(node, error):  # type: ignore[no-untyped-def]
    out = getattr(node, "workeroutput", {})
    for b, n in out.get("backend_counts", {}).items():
        _ran[b] += n
    _skipped_pg.extend(out.get("skipped_pg", []))


# -- partnerships ------------------------------------------------------------------------
def register_key(client: TestClient, tenant: Tenant):  # type: ignore[no-untyped-def]
    """Give `tenant` a fresh X25519 key pair, registered with the escrow."""
    from blindmap import crypto

    priv = crypto.generate_private_key()
    pub = crypto.encode_public_key(crypto.public_key_bytes(priv))
    r = client.put("/v1/me/public-key", json={"public_key": pub}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    tenant.private_key = priv  # type: ignore[attr-defined]
    return priv


def partner_up(client: TestClient, inviter: Tenant, invitee: Tenant, *, accept: bool = True) -> str:
    """An (active by default) partnership between two tenants with registered keys."""
    for t in (inviter, invitee):
        if not hasattr(t, "private_key"):
            register_key(client, t)
    r = client.post("/v1/partnerships", json={"partner": invitee.slug}, headers=inviter.headers())
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    if accept:
        r = client.post(f"/v1/partnerships/{pid}/accept", headers=invitee.headers())
        assert r.status_code == 200, r.text
    return str(pid)


@pytest.fixture
def as_company(client, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """Run the `blindmap` CLI as a tenant: its API key, its own key file under tmp_path,
    the real SDK talking to the real app in-process."""
    from click.testing import CliRunner

    import blindmap
    from blindmap import cli

    monkeypatch.setattr(
        cli.State,
        "client",
        lambda self: blindmap.Client(base_url="http://testserver", http_client=client),
    )
    monkeypatch.delenv("BLINDMAP_KEY_PASSPHRASE", raising=False)
    monkeypatch.chdir(tmp_path)

    def invoke(tenant, *args: str, role: str = "admin", input: str | None = None):  # type: ignore[no-untyped-def]
        env = {
            "BLINDMAP_API_KEY": tenant.keys[role],
            "BLINDMAP_KEY_FILE": str(tmp_path / tenant.slug / "key.pem"),
        }
        return CliRunner().invoke(
            cli.main, list(args), env=env, input=input, catch_exceptions=False
        )

    return invoke


# --------------------------------------------------------------------------- secrets in logs
# Issue 8 item 9: every test runs with a handler on the root logger that fails the test
# when a log record (message, arguments, extra fields or traceback) carries an API key,
# PEM key material or a domain from the sample exports. Tokens and sealed payloads are
# random bytes with no pattern to look for; the service never formats them into a log
# line (checked by review, and by the JSON-log test of issue 2).

_API_KEY = re.compile(r"bmk_[A-Za-z0-9_-]{16,}")
_SAMPLE_DOMAINS: frozenset[str] | None = None


def _sample_domains() -> frozenset[str]:
    global _SAMPLE_DOMAINS
    if _SAMPLE_DOMAINS is None:
        from blindmap import sync as bsync

        examples = Path(__file__).resolve().parent.parent / "examples"
        found: set[str] = set()
        for path in sorted(examples.glob("*.csv")):
            read = bsync.read_accounts(path, population="customers", jobs=1)
            found |= {a.domain for accts in read.accounts.values() for a in accts}
        _SAMPLE_DOMAINS = frozenset(d for d in found if len(d) > 6)
    return _SAMPLE_DOMAINS


class _SecretTrap(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string is not our concern here
            text = str(record.msg)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD}
        text += " " + repr(extra)
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        low = text.lower()
        if _API_KEY.search(text):
            self.hits.append(f"{record.name}: an API key")
        if "private key-----" in low:
            self.hits.append(f"{record.name}: PEM key material")
        for d in _sample_domains():
            if d in low:
                self.hits.append(f"{record.name}: sample domain {d!r}")
                break


_STANDARD_RECORD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


@pytest.fixture(autouse=True)
def _no_secrets_in_logs() -> Iterator[None]:
    trap = _SecretTrap()
    # the service's "blindmap" logger does not propagate outside tests (service/logs.py)
    loggers = [logging.getLogger(), logging.getLogger("blindmap")]
    for lg in loggers:
        lg.addHandler(trap)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(trap)
    assert not trap.hits, "secrets reached the logs: " + "; ".join(sorted(set(trap.hits)))
