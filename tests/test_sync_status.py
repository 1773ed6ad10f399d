"""The sync status (`GET /v1/partnerships/{pid}/status`, one statement since the read-path
work): what each side sees of both sides' lists, on both databases."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import update

from service.models import Job
from tests.conftest import make_tenant, partner_up, register_key
from tests.test_uploads import pair  # noqa: F401  (fixture)
from tests.uploads import upload, wait_jobs


def _status(client, tenant, pid, role="reader"):  # type: ignore[no-untyped-def]
    r = client.get(f"/v1/partnerships/{pid}/status", headers=tenant.headers(role))
    assert r.status_code == 200, r.text
    return r.json()


def test_both_sides_lists_jobs_and_times(client, tenants, app, pair):  # noqa: F811
    for t in (tenants.a, tenants.b):
        client.post(
            "/v1/populations", json={"slug": "resellers", "kind": "other"}, headers=t.headers()
        )
    upload(client, tenants.a, pair, "customers", [[i] for i in range(7)])
    upload(client, tenants.a, pair, "resellers", [[i] for i in range(3)])
    upload(client, tenants.b, pair, "customers", [[i] for i in range(4, 9)])
    wait_jobs(app)
    a, b = _status(client, tenants.a, pair), _status(client, tenants.b, pair)
    # mine in population order, with my match job; the partner's only where its policy
    # shows the population (A's policy hides its `resellers`: no trace of it for B)
    assert [(m["population"], m["records"], m["match_job"]) for m in a["mine"]] == [
        ("customers", 7, "done"),
        ("resellers", 3, "done"),
    ]
    assert [(m["population"], m["records"], m["match_job"]) for m in a["partner"]] == [
        ("customers", 5, None)  # never the partner's job state
    ]
    assert [m["population"] for m in b["partner"]] == ["customers"] and "resellers" not in str(b)
    assert [(m["population"], m["kind"]) for m in b["mine"]] == [("customers", "customers")]
    for m in a["mine"] + a["partner"] + b["mine"]:
        at = datetime.fromisoformat(m["committed_at"].replace("Z", "+00:00"))
        assert at.utcoffset() is not None and at.utcoffset().total_seconds() == 0
        assert m["stale_keys"] is False
    assert a["warnings"] == [] and a["normalizer_mismatch"] is False
    assert a["partnership_id"] == pair

    # the latest job of the list is the one shown
    with app.state.sessionmaker.begin() as s:
        s.execute(update(Job).values(status="failed"))
    assert [m["match_job"] for m in _status(client, tenants.a, pair)["mine"]] == [
        "failed",
        "failed",
    ]


def test_stale_keys_after_a_rotation_on_either_side(client, tenants, app, pair):  # noqa: F811
    upload(client, tenants.a, pair, "customers", [[1], [2]])
    upload(client, tenants.b, pair, "customers", [[2], [3]])
    register_key(client, tenants.b)  # B rotates: every list sealed before is stale
    a, b = _status(client, tenants.a, pair), _status(client, tenants.b, pair)
    assert [m["stale_keys"] for m in a["mine"] + a["partner"]] == [True, True]
    assert [m["stale_keys"] for m in b["mine"] + b["partner"]] == [True, True]
    assert any("re-sync" in w for w in a["warnings"])
    # A re-syncs under the new epochs: its list is fresh for both, B's is still stale
    upload(client, tenants.a, pair, "customers", [[1], [2]])
    a, b = _status(client, tenants.a, pair), _status(client, tenants.b, pair)
    assert [m["stale_keys"] for m in a["mine"]] == [False]
    assert [m["stale_keys"] for m in a["partner"]] == [True]
    assert [m["stale_keys"] for m in b["partner"]] == [False]


def test_no_lists_another_tenant_and_an_ended_partnership(client, tenants, app):
    pid = partner_up(client, tenants.a, tenants.b)
    empty = _status(client, tenants.a, pid)
    assert empty["mine"] == [] and empty["partner"] == [] and empty["warnings"] == []
    stranger = make_tenant(app, "initech", "Initech")
    register_key(client, stranger)
    for who in (stranger, tenants.a):
        bogus = uuid.uuid4() if who is tenants.a else pid
        r = client.get(f"/v1/partnerships/{bogus}/status", headers=who.headers("reader"))
        assert r.status_code == 404 and r.headers["content-type"].startswith(
            "application/problem+json"
        )
        assert str(bogus) in r.json()["detail"]
    client.post(
        "/v1/populations",
        json={"slug": "customers", "kind": "customers"},
        headers=tenants.a.headers(),
    )
    upload(client, tenants.a, pid, "customers", [[1]])
    r = client.post(f"/v1/partnerships/{pid}/end", headers=tenants.b.headers())
    assert r.status_code == 200, r.text
    for t in (tenants.a, tenants.b):
        ended = _status(client, t, pid)
        assert ended["mine"] == [] and ended["partner"] == []
