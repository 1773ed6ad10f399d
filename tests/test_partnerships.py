"""Partnership lifecycle on both databases, including the error paths and races."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import func, inspect, select

from blindmap import crypto
from tests.conftest import make_tenant, partner_up, register_key


def test_public_key_registration_bumps_epoch(client, tenants):
    priv = crypto.generate_private_key()
    pub = crypto.encode_public_key(crypto.public_key_bytes(priv))
    h = tenants.a.headers()
    r = client.put("/v1/me/public-key", json={"public_key": pub}, headers=h)
    assert r.status_code == 200 and r.json()["key_epoch"] == 1 and r.json()["public_key"] == pub
    assert (
        client.put("/v1/me/public-key", json={"public_key": pub}, headers=h).json()["key_epoch"]
        == 1
    )
    other = crypto.encode_public_key(crypto.public_key_bytes(crypto.generate_private_key()))
    assert (
        client.put("/v1/me/public-key", json={"public_key": other}, headers=h).json()["key_epoch"]
        == 2
    )
    assert (
        client.put(
            "/v1/me/public-key", json={"public_key": pub}, headers=tenants.a.headers("uploader")
        ).status_code
        == 403
    )


def test_bad_public_keys_are_422_naming_the_field(client, tenants):
    for bad in ("short", "A" * 44, crypto.encode_public_key(bytes(32))):
        r = client.put("/v1/me/public-key", json={"public_key": bad}, headers=tenants.a.headers())
        assert r.status_code == 422, bad
        assert r.json()["errors"][0]["field"] == "public_key"


def test_lifecycle(client, tenants):
    a, b = tenants.a, tenants.b
    for t in (a, b):
        register_key(client, t)
    r = client.post("/v1/partnerships", json={"partner": "globex"}, headers=a.headers())
    assert r.status_code == 201
    p = r.json()
    assert (
        p["status"] == "pending" and p["my_role"] == "inviter" and p["partner"]["slug"] == "globex"
    )
    seen_by_b = client.get("/v1/partnerships", headers=b.headers("reader")).json()["items"]
    assert [x["id"] for x in seen_by_b] == [p["id"]] and seen_by_b[0]["my_role"] == "invitee"
    # only the invitee accepts
    r = client.post(f"/v1/partnerships/{p['id']}/accept", headers=a.headers())
    assert r.status_code == 409 and "invited company" in r.json()["detail"]
    r = client.post(f"/v1/partnerships/{p['id']}/accept", headers=b.headers("reader"))
    assert r.status_code == 403
    r = client.post(f"/v1/partnerships/{p['id']}/accept", headers=b.headers())
    assert r.status_code == 200
    active = r.json()
    assert active["status"] == "active" and active["partner"]["slug"] == "acme"
    assert active["partner"]["public_key"] and active["partner"]["key_epoch"] == 1
    assert active["partner"]["epoch_at_acceptance"] == 1 and not active["needs_resync"]
    assert client.post(f"/v1/partnerships/{p['id']}/accept", headers=b.headers()).status_code == 409
    got = client.get(f"/v1/partnerships/{p['id']}", headers=a.headers("reader")).json()
    assert got["partner"]["public_key"] == active["me"]["public_key"]
    assert (
        client.get("/v1/partnerships", params={"status": "pending"}, headers=a.headers()).json()[
            "items"
        ]
        == []
    )


def test_invite_errors(client, tenants):
    a = tenants.a
    r = client.post("/v1/partnerships", json={"partner": "acme"}, headers=a.headers())
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "partner"
    r = client.post("/v1/partnerships", json={"partner": "nobody"}, headers=a.headers())
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
    assert (
        client.post("/v1/partnerships", json={"partner": "globex"}, headers=a.headers()).status_code
        == 201
    )
    for who, slug in ((a, "globex"), (tenants.b, "acme")):  # either direction
        r = client.post("/v1/partnerships", json={"partner": slug}, headers=who.headers())
        detail = r.json()["detail"]
        assert r.status_code == 409 and "already have a partnership" in detail
        assert "pending" in detail


def test_accept_needs_both_keys(client, tenants):
    a, b = tenants.a, tenants.b
    pid = client.post("/v1/partnerships", json={"partner": "globex"}, headers=a.headers()).json()[
        "id"
    ]
    r = client.post(f"/v1/partnerships/{pid}/accept", headers=b.headers())
    assert r.status_code == 409 and "Your company has not registered" in r.json()["detail"]
    register_key(client, b)
    r = client.post(f"/v1/partnerships/{pid}/accept", headers=b.headers())
    assert r.status_code == 409 and "'acme' has not registered" in r.json()["detail"]
    register_key(client, a)
    assert client.post(f"/v1/partnerships/{pid}/accept", headers=b.headers()).status_code == 200


def test_key_rotation_flags_resync_on_both_sides(client, tenants):
    pid = partner_up(client, tenants.a, tenants.b)
    register_key(client, tenants.a)  # rotate
    for t, side in ((tenants.a, "me"), (tenants.b, "partner")):
        got = client.get(f"/v1/partnerships/{pid}", headers=t.headers()).json()
        assert got["needs_resync"] and got[side]["key_changed"] and got[side]["key_epoch"] == 2


def _rows_of(session, pid):
    """Rows referring to partnership `pid`, per table, over every table in the database."""
    from service.models import Base

    db_tables = set(inspect(session.get_bind()).get_table_names()) - {"alembic_version"}
    assert db_tables == set(Base.metadata.tables), "a table is not in the models"
    out = {}
    for table in Base.metadata.sorted_tables:
        col = table.c.get("partnership_id")
        if table.name == "partnerships":
            col = table.c.id
        if col is not None:
            out[table.name] = session.execute(
                select(func.count()).select_from(table).where(col == uuid.UUID(pid))
            ).scalar()
    return out


def test_end_deletes_everything_and_returns_a_receipt(client, tenants, app):
    pid = partner_up(client, tenants.a, tenants.b)
    client.put(
        f"/v1/partnerships/{pid}/policy", json={"default": "count"}, headers=tenants.a.headers()
    )
    r = client.post(f"/v1/partnerships/{pid}/end", headers=tenants.b.headers())
    assert r.status_code == 200
    receipt = r.json()
    assert receipt["partnership_id"] == pid and receipt["deleted"]["policies"] == 3
    assert "partnerships" not in receipt["deleted"] and "audit_events" not in receipt["deleted"]
    with app.state.sessionmaker() as s:
        rows = _rows_of(s, pid)
    leftovers = {
        t: n
        for t, n in rows.items()
        if n and t not in ("partnerships", "audit_events", "disclosures")
    }
    assert leftovers == {}, leftovers
    got = client.get(f"/v1/partnerships/{pid}", headers=tenants.a.headers()).json()
    assert got["status"] == "ended" and got["ended_at"]
    for method, path in (("POST", "end"), ("POST", "accept"), ("PUT", "policy")):
        r = client.request(
            method,
            f"/v1/partnerships/{pid}/{path}",
            headers=tenants.a.headers(),
            json={"default": "hidden"} if method == "PUT" else None,
        )
        assert r.status_code == 409, (path, r.text)
    # the audit entries that remain hold no record data, only counts and ids
    events = client.get("/v1/audit", headers=tenants.a.headers()).json()["items"]
    end_event = next(e for e in events if e["action"] == "partnership.end")
    assert end_event["details"]["deleted"]["policies"] == 3
    # a new partnership of the same pair can start again
    assert (
        client.post(
            "/v1/partnerships", json={"partner": "globex"}, headers=tenants.a.headers()
        ).status_code
        == 201
    )


def test_concurrent_double_accept(client, tenants, app):
    from fastapi.testclient import TestClient

    pid = partner_up(client, tenants.a, tenants.b, accept=False)
    results: list[int] = []
    barrier = threading.Barrier(4)

    def accept():
        with TestClient(app) as c:
            barrier.wait()
            results.append(
                c.post(f"/v1/partnerships/{pid}/accept", headers=tenants.b.headers()).status_code
            )

    threads = [threading.Thread(target=accept) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409, 409, 409]
    events = client.get("/v1/audit", headers=tenants.b.headers()).json()["items"]
    assert sum(e["action"] == "partnership.accept" for e in events) == 1


def test_end_while_partner_reads(client, tenants, app):
    from fastapi.testclient import TestClient

    pid = partner_up(client, tenants.a, tenants.b)
    statuses: list[int] = []
    stop, reading = threading.Event(), threading.Event()

    def read():
        with TestClient(app, raise_server_exceptions=False) as c:
            while not stop.is_set():
                for path in ("", "/policy", "/partner-policy"):
                    reading.set()
                    statuses.append(
                        c.get(
                            f"/v1/partnerships/{pid}{path}", headers=tenants.b.headers()
                        ).status_code
                    )

    reader = threading.Thread(target=read)
    reader.start()
    assert reading.wait(10)
    try:
        r = client.post(f"/v1/partnerships/{pid}/end", headers=tenants.a.headers())
    finally:
        stop.set()
        reader.join()
    assert r.status_code == 200
    assert statuses and set(statuses) <= {200, 404}, set(statuses)


def test_third_company_sees_nothing(client, tenants, app):
    pid = partner_up(client, tenants.a, tenants.b)
    c = make_tenant(app, "initech", "Initech")
    assert client.get(f"/v1/partnerships/{pid}", headers=c.headers()).status_code == 404
    assert client.get("/v1/partnerships", headers=c.headers()).json()["items"] == []
    assert client.post(f"/v1/partnerships/{pid}/end", headers=c.headers()).status_code == 404
