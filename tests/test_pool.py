"""The connection pool without `pool_pre_ping` (service/db.py): a pooled connection the
server has closed is discarded at checkout, without a round trip, and the request that
would have used it succeeds."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.conftest import partner_up


def test_connection_closed_by_the_server_is_replaced_at_checkout(client, tenants, app, backend):
    if backend != "postgresql":
        pytest.skip("PostgreSQL only")
    pid = partner_up(client, tenants.a, tenants.b)
    url = f"/v1/partnerships/{pid}/status"
    for _ in range(3):  # the pool now holds idle connections
        assert client.get(url, headers=tenants.a.headers("reader")).status_code == 200
    dsn = app.state.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    time.sleep(0.2)  # the server's end of each socket is closed by now
    for _ in range(3):
        r = client.get(url, headers=tenants.a.headers("reader"))
        assert r.status_code == 200, r.text  # not 503: no pooled corpse was used
