"""The release step of reports under concurrency, and the per-process report caches:
every release is logged exactly once in one unbroken chain and charged to the budget,
the budget is never overspent, and a policy change made through any process takes
effect on the next report."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from blindmap.disclosure import verify_chain
from blindmap.policy import ReportKind
from blindmap.protocol import Role
from service import errors
from service.auth import Principal
from service.config import Settings
from service.main import create_app
from service.models import RevealSpend
from service.report import service as reports
from tests.conftest import TEST_SECRET
from tests.test_reports import _policy, mapped  # noqa: F401  (fixture)
from tests.uploads import b64, token

THREADS = 8


def _app(app, **overrides):  # type: ignore[no-untyped-def]
    """Another app instance on the same database: another process's caches."""
    settings = Settings(
        env="test",
        secret_key=TEST_SECRET,
        database_url=app.state.settings.database_url,
        embedded_worker=False,
        **overrides,
    )
    return create_app(settings)


def _log(client, tenant, pid):  # type: ignore[no-untyped-def]
    items, cursor = [], None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get(
            f"/v1/partnerships/{pid}/disclosures", params=params, headers=tenant.headers()
        ).json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def _run_together(app, jobs):  # type: ignore[no-untyped-def]
    """Run (method, path, headers, body) requests from THREADS threads at once, each
    thread with its own TestClient; returns the status codes."""
    statuses: list[int] = []
    barrier = threading.Barrier(THREADS)
    lock = threading.Lock()

    def work(mine):  # type: ignore[no-untyped-def]
        with TestClient(app) as c:
            barrier.wait()
            for method, path, headers, body in mine:
                r = c.request(method, path, headers=headers, json=body)
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=work, args=(jobs[i::THREADS],)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return statuses


def test_concurrent_releases_make_one_unbroken_chain(client, tenants, mapped, app):  # noqa: F811
    a, b = tenants.a, tenants.b
    base = f"/v1/partnerships/{mapped}"
    jobs = []
    for i in range(THREADS * 6):
        who = a if i % 2 == 0 else b
        kind = i % 3
        if kind == 0:
            jobs.append(("GET", f"{base}/reports/summary", who.headers("reader"), None))
        elif kind == 1:
            jobs.append(("GET", f"{base}/reports/overlaps?limit=7", who.headers("reader"), None))
        else:
            mine = range(20, 25) if who is a else range(25, 30)
            body = {"tokens": [{"kind": "domain", "value": b64(token(v))} for v in mine]}
            jobs.append(("POST", f"{base}/lookup", who.headers("reader"), body))
    other = _app(app)  # half of the threads through another "process"
    statuses = _run_together(other, jobs[: len(jobs) // 2]) + _run_together(
        app, jobs[len(jobs) // 2 :]
    )
    assert Counter(statuses) == {200: len(jobs)}

    log = _log(client, a, mapped)
    assert [e["seq"] for e in log] == list(range(1, len(jobs) + 1))
    assert verify_chain(log) == len(jobs)
    # every release charged exactly once to its viewer's budget
    released = Counter()
    for e in log:
        released[e["viewer"]] += e["records"]
    with app.state.sessionmaker() as s:
        spent = dict(
            s.execute(
                select(RevealSpend.viewer_id, func.sum(RevealSpend.records))
                .where(RevealSpend.partnership_id == uuid.UUID(mapped))
                .group_by(RevealSpend.viewer_id)
            ).all()
        )
    assert {a.slug: spent.get(a.id, 0), b.slug: spent.get(b.id, 0)} == {
        a.slug: released[a.slug],
        b.slug: released[b.slug],
    }
    assert released[a.slug] > 0 and released[b.slug] > 0


def test_concurrent_releases_never_overspend_the_budget(client, tenants, mapped, app):  # noqa: F811
    # each page releases 5 partner records; the budget holds exactly 3 pages
    tight = _app(app, reveal_budget_per_day=15)
    url = f"/v1/partnerships/{mapped}/reports/overlaps?limit=5"
    statuses = _run_together(tight, [("GET", url, tenants.a.headers(), None)] * THREADS)
    assert Counter(statuses) == {200: 3, 429: THREADS - 3}
    log = _log(client, tenants.a, mapped)
    assert sum(e["records"] for e in log) == 15
    assert Counter(e["report"] for e in log) == {
        "overlaps": 3,
        "blocked:reveal-budget": THREADS - 3,
    }
    assert verify_chain(log) == len(log)


def test_a_policy_change_through_another_process_applies_at_once(client, tenants, mapped, app):  # noqa: F811
    a, b = tenants.a, tenants.b
    url = f"/v1/partnerships/{mapped}/reports/overlaps"
    first = client.get(url, headers=a.headers()).json()
    assert first["items"][0]["partner"][0]["sealed"]
    assert sorted(first["items"][0]["partner"][0]["fields"]) == ["domain", "name"]
    versions = first["policy_versions"]
    with TestClient(_app(app)) as other:  # B drops a sealed field through another process
        _policy(
            other,
            b,
            mapped,
            {
                "default": "hidden",
                "populations": {"customers": {"share": "full", "fields": ["name"]}},
            },
        )
    after = client.get(url, headers=a.headers()).json()
    assert after["policy_versions"] == {**versions, "partner": versions["partner"] + 1}
    rec = after["items"][0]["partner"][0]
    assert rec["sealed"] is None and "withheld until it re-syncs" in rec["withheld"]
    # and hiding the population removes it from every report at once
    with TestClient(_app(app)) as other:
        _policy(other, b, mapped, {"default": "hidden", "populations": {}})
    assert client.get(url, headers=a.headers()).json()["items"] == []
    summary = client.get(f"/v1/partnerships/{mapped}/reports/summary", headers=a.headers())
    assert summary.json()["theirs"] == [] and summary.json()["cells"] == []


def test_a_policy_change_during_a_report_is_a_conflict(client, tenants, mapped, app):  # noqa: F811
    a, b = tenants.a, tenants.b
    with app.state.sessionmaker() as s:
        caller = Principal(
            s, company_id=a.id, key_id=a.key_ids["admin"], role=Role.admin, prefix="bmk_test"
        )
        ctx = reports.context(s, caller, uuid.UUID(mapped))
        s.rollback()
        _policy(client, b, mapped, {"default": "hidden", "populations": {}})
        with pytest.raises(errors.Conflict, match="policy changed"):
            reports._release(s, app.state.settings, ctx, ReportKind.overlaps, 3)
        s.rollback()
    log = _log(client, a, mapped)
    assert log == [] or all(e["report"] != "overlaps" for e in log)


def test_overlaps_body_is_exactly_the_models_json(client, tenants, mapped, app):  # noqa: F811
    """The overlaps page is built as JSON without pydantic (service.report.overlaps): it
    must be what protocol.OverlapPage would have produced, field for field and in order."""
    from blindmap import protocol

    url = f"/v1/partnerships/{mapped}/reports/overlaps"
    bodies = [client.get(url, params={"limit": 7}, headers=tenants.a.headers()).json()]
    bodies.append(
        client.get(
            url,
            params={"limit": 7, "cursor": bodies[0]["next_cursor"]},
            headers=tenants.a.headers(),
        ).json()
    )
    _policy(  # B drops a sealed field: the records turn into "withheld" ones
        client,
        tenants.b,
        mapped,
        {"default": "hidden", "populations": {"customers": {"share": "full", "fields": ["name"]}}},
    )
    bodies.append(client.get(url, params={"limit": 7}, headers=tenants.a.headers()).json())
    bodies.append(client.get(url, headers=tenants.b.headers()).json())
    for body in bodies:
        model = protocol.OverlapPage.model_validate(body)
        assert model.model_dump(mode="json") == body
        assert list(body) == list(protocol.OverlapPage.model_fields)
        for item in body["items"]:
            assert list(item) == list(protocol.OverlapItem.model_fields)
            for rec in item["partner"]:
                assert list(rec) == list(protocol.PartnerRecord.model_fields)
    assert bodies[0]["items"][0]["partner"][0]["sealed"]
    assert bodies[2]["items"][0]["partner"][0]["withheld"]
    assert bodies[3]["items"]
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/v1/partnerships/{partnership_id}/reports/overlaps"]["get"]
    assert ok["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OverlapPage"
    }
