"""Engine, sessions and migrations for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import select as _select
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import psycopg
from alembic import command
from alembic.config import Config
from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def make_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if settings.is_sqlite:
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    # JIT off: PostgreSQL JIT-compiles any statement its planner costs above 100,000 —
    # every 10k-record report page, the match join — and spent 10-16 ms compiling for
    # a 100-250 ms page (EXPLAIN ANALYZE, 1M x 1M); nothing here runs long enough to
    # earn that back.
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=10,
        connect_args={"options": "-c jit=off"},
    )
    _configure_postgresql(engine)
    return engine


def _configure_postgresql(engine: Engine) -> None:
    """A pooled connection is checked without a round trip when it leaves the pool.

    `pool_pre_ping` sent `SELECT 1` on every checkout: a round trip per request, and
    PostgreSQL CPU. Instead: a connection that psycopg already knows to be closed or
    broken (a raw execution on it failed), or whose socket is readable while it sits idle
    (an idle connection is owed nothing; readable means the server closed it — a
    restart, `pg_terminate_backend` — or sent a termination notice), is discarded and
    the pool connects anew (SQLAlchemy retries the checkout). What this cannot see, a
    peer that vanished without closing the socket, fails on first use, and the request
    answers 503 + Retry-After like any other outage (service/main.py); SQLAlchemy then
    invalidates the rest of the pool."""

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_conn.closed or dbapi_conn.broken:
            raise exc.DisconnectionError("connection closed")
        poll = _select.poll()
        try:
            poll.register(dbapi_conn.pgconn.socket, _select.POLLIN)
        except (OSError, ValueError, psycopg.Error):
            raise exc.DisconnectionError("connection socket unusable") from None
        if poll.poll(0):  # readable, hung up or in error
            raise exc.DisconnectionError("idle connection has unread input")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        # 16 MiB page cache per connection (default 2 MiB): chunk inserts into the
        # records/tokens indexes re-read fewer pages as the tables grow. Every pooled
        # connection has its own cache, so 64 MiB pushed the server past 300 MB RSS.
        cur.execute("PRAGMA cache_size=-16384")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later
        # writes can fail with SQLITE_BUSY instead of waiting for the lock.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str) -> Config:
    cfg = Config(toml_file=str(ROOT / "pyproject.toml"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def migrate(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent)."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1] if "///" in database_url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One unit of work per request: commit on success, roll back on any error.

    A coroutine: creating a session does no I/O (it connects on first use), so it is
    created inline; the commit and close run in the thread pool only when there is
    something to commit. A route that runs its database work in one thread-pool trip
    ends it with `finish(session)` (commit in the same trip); then the exit here has
    nothing left to do and costs no second trip."""
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    session = factory()
    try:
        yield session
    except BaseException as err:
        with anyio.CancelScope(shield=True):  # the connection goes back to the pool
            await run_in_threadpool(_roll_back, factory, session, err)
        raise
    if session.get_transaction() is None and not (session.new or session.dirty or session.deleted):
        session.close()  # no transaction, no connection: nothing to commit or return
    else:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(_commit, session)


def finish(session: Session) -> None:
    """Commit the request's unit of work now (see `get_session`)."""
    session.commit()


def _commit(session: Session) -> None:
    with session:
        session.commit()


def _roll_back(factory: sessionmaker[Session], session: Session, err: BaseException) -> None:
    with session:
        session.rollback()
    for record in getattr(err, "after_rollback", ()):
        with factory.begin() as own:
            record(own)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
