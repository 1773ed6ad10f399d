"""On PostgreSQL the overlaps items are built as JSON by the database
(`service.report.queries.overlap_items_pg`); they must be exactly what the Python
builder (`service.report.service._Releaser`, the SQLite path) makes of the same rows."""

from __future__ import annotations

import orjson
import pytest

from blindmap.protocol import OverlapPage, Role
from service.auth import Principal
from service.report import service
from tests.test_reports import _policy, mapped  # noqa: F401  (fixture)
from tests.uploads import upload, wait_jobs


def _pages(app, tenant, pid, *, sql: bool, limit: int, **filters):  # type: ignore[no-untyped-def]
    """Every page, as the JSON the router sends."""
    out, cursor = [], None
    while True:
        with app.state.sessionmaker() as s:
            caller = Principal(
                s,
                company_id=tenant.id,
                key_id=tenant.key_ids["reader"],
                role=Role.reader,
                prefix="",
            )
            page = service.overlaps(
                s,
                app.state.settings,
                caller,
                pid,
                cursor=cursor,
                limit=limit,
                sql_items=sql,
                mine=filters.get("mine"),
                theirs=filters.get("theirs"),
            )
            s.commit()
        body = orjson.loads(orjson.dumps(page))
        OverlapPage.model_validate(body)  # the response model, field for field
        out.append(body)
        cursor = body["next_cursor"]
        if not cursor:
            return out


def test_sql_items_equal_python_items(client, tenants, app, backend, mapped):  # noqa: F811
    if backend != "postgresql":
        pytest.skip("the JSON is built by the database on PostgreSQL only")
    a, b = tenants.a, tenants.b
    # B: a list without sealed fields (`fields: []`, no payload) beside the sealed one
    client.post("/v1/populations", json={"slug": "events", "kind": "other"}, headers=b.headers())
    upload(client, b, mapped, "events", [[i] for i in range(10, 50, 2)])
    _policy(
        client,
        b,
        mapped,
        {
            "default": "hidden",
            "min_count": 3,
            "min_population": 5,
            "populations": {
                "customers": {"share": "full", "fields": ["name", "domain"]},
                "events": {"share": "overlap"},
            },
        },
    )
    wait_jobs(app)
    cases = [
        (a, {}, 7),
        (a, {}, 1000),
        (a, {"mine": "customers", "theirs": "events"}, 3),
        (b, {}, 5),  # A's customers: sealed `name`; pipeline: count only (not released)
    ]
    for who, filters, limit in cases:
        py = _pages(app, who, mapped, sql=False, limit=limit, **filters)
        sql = _pages(app, who, mapped, sql=True, limit=limit, **filters)
        assert sql == py
        items = [i for p in sql for i in p["items"]]
        assert items and all(i["partner"] for i in items)
    released = {r["population"]: r for p in sql for i in p["items"] for r in i["partner"]}
    assert released["customers"]["sealed"] and released["customers"]["fields"] == ["name"]

    # B's policy drops `domain`: B's customers payloads are withheld (sealed with it)
    _policy(
        client,
        b,
        mapped,
        {
            "default": "hidden",
            "min_count": 3,
            "min_population": 5,
            "populations": {
                "customers": {"share": "full", "fields": ["name"]},
                "events": {"share": "overlap"},
            },
        },
    )
    py = _pages(app, a, mapped, sql=False, limit=9)
    sql = _pages(app, a, mapped, sql=True, limit=9)
    assert sql == py
    recs = [r for p in sql for i in p["items"] for r in i["partner"]]
    withheld = [r for r in recs if r["population"] == "customers"]
    assert withheld and all(r["sealed"] is None and "domain" in r["withheld"] for r in withheld)
    unsealed = [r for r in recs if r["population"] == "events"]
    assert unsealed and all(
        (r["sealed"], r["fields"], r["withheld"]) == (None, [], None) for r in unsealed
    )


def test_base64url_in_sql_equals_python(app, backend):  # type: ignore[no-untyped-def]
    """The database's base64url (queries._B64URL) for every padding case and for values
    long enough that encode() wraps its output in lines."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL only")
    import os

    from sqlalchemy import text

    from service.report.queries import _B64URL
    from service.report.service import _b64

    values = [os.urandom(n) for n in (*range(0, 10), 40, 56, 57, 58, 100, 300, 4096)]
    with app.state.sessionmaker() as s:
        got = [
            s.execute(text(f"SELECT {_B64URL.format('CAST(:v AS bytea)')}"), {"v": v}).scalar()
            for v in values
        ]
    assert got == [_b64(v) for v in values]
