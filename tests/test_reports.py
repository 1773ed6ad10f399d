"""Reports over HTTP: policy enforcement, suppression, pagination, budget, disclosures."""

from __future__ import annotations

import pytest

from blindmap.disclosure import ChainError, verify_chain
from tests.conftest import partner_up
from tests.uploads import b64, token, upload, wait_jobs


def _policy(client, tenant, pid, doc):
    r = client.put(f"/v1/partnerships/{pid}/policy", json=doc, headers=tenant.headers())
    assert r.status_code == 200, r.text


def _pops(client, tenant, *slugs):
    for s in slugs:
        client.post(
            "/v1/populations",
            json={"slug": s, "kind": "customers" if s == "customers" else "other"},
            headers=tenant.headers(),
        )


@pytest.fixture
def mapped(client, tenants, app):
    """A: customers 0..39, pipeline 100..129; B: customers 20..59, secret 0..29."""
    a, b = tenants.a, tenants.b
    pid = partner_up(client, a, b)
    _pops(client, a, "customers", "pipeline")
    _pops(client, b, "customers", "secret")
    _policy(
        client,
        a,
        pid,
        {
            "default": "hidden",
            "min_count": 3,
            "min_population": 5,
            "populations": {
                "customers": {"share": "overlap", "fields": ["name"]},
                "pipeline": {"share": "count"},
            },
        },
    )
    _policy(
        client,
        b,
        pid,
        {
            "default": "hidden",
            "min_count": 3,
            "min_population": 5,
            "populations": {"customers": {"share": "full", "fields": ["name", "domain"]}},
        },
    )
    upload(client, a, pid, "customers", [[i] for i in range(40)], sealed_fields=["name"])
    upload(client, a, pid, "pipeline", [[i] for i in range(100, 130)])
    upload(
        client, b, pid, "customers", [[i] for i in range(20, 60)], sealed_fields=["name", "domain"]
    )
    upload(client, b, pid, "secret", [[i] for i in range(30)])
    wait_jobs(app)
    return pid


def test_summary_matrix(client, tenants, mapped):
    r = client.get(
        f"/v1/partnerships/{mapped}/reports/summary", headers=tenants.a.headers("reader")
    )
    assert r.status_code == 200
    rep = r.json()
    assert [p["slug"] for p in rep["theirs"]] == ["customers"]  # b's `secret` is hidden
    cells = {(c["mine"], c["theirs"]): c["display"] for c in rep["cells"]}
    assert cells == {("customers", "customers"): "20", ("pipeline", "customers"): "<3"}
    assert rep["policy_versions"] == {"mine": 2, "partner": 2}
    assert "secret" not in r.text
    # b sees a's customers and pipeline (count), with the counts from b's side
    rep_b = client.get(
        f"/v1/partnerships/{mapped}/reports/summary", headers=tenants.b.headers()
    ).json()
    cells_b = {(c["mine"], c["theirs"]): c["display"] for c in rep_b["cells"]}
    assert cells_b[("customers", "customers")] == "20" and cells_b[("secret", "customers")] == "30"
    assert cells_b[("secret", "pipeline")] == "<3"


def test_min_population_hides_counts_for_tiny_lists(client, tenants, mapped, app):
    _pops(client, tenants.a, "probe")
    upload(client, tenants.a, mapped, "probe", [[20], [21], [22], [23]])  # 4 < min_population 5
    wait_jobs(app)
    rep = client.get(
        f"/v1/partnerships/{mapped}/reports/summary", headers=tenants.a.headers()
    ).json()
    cell = next(c for c in rep["cells"] if c["mine"] == "probe")
    assert cell["matched"] is None and cell["display"] == "—"


def test_overlaps_release_partner_fields_and_paginate(client, tenants, mapped):
    h = tenants.a.headers("reader")
    seen, cursor = [], None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = client.get(
            f"/v1/partnerships/{mapped}/reports/overlaps", params=params, headers=h
        ).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 20 and len({i["ref"] for i in seen}) == 20
    assert {i["ref"] for i in seen} == {f"r{i}" for i in range(20, 40)}
    for item in seen:
        assert item["population"] == "customers" and item["self_sealed"]
        (rec,) = item["partner"]
        assert (
            rec["population"] == "customers"
            and rec["sealed"]
            and rec["fields"] == ["name", "domain"]
        )
    # b sees a's customers at overlap (name only); a's pipeline is count-only: no records
    items_b = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps",
        params={"limit": 1000},
        headers=tenants.b.headers(),
    ).json()["items"]
    assert {p["population"] for i in items_b for p in i["partner"]} == {"customers"}
    assert all(p["fields"] == ["name"] for i in items_b for p in i["partner"])


def test_overlaps_filters(client, tenants, mapped):
    h = tenants.b.headers()
    r = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps", params={"mine": "secret"}, headers=h
    )
    assert {i["ref"] for i in r.json()["items"]} == {f"r{i}" for i in range(30)}
    r = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps", params={"theirs": "pipeline"}, headers=h
    )
    assert r.json()["items"] == []  # count-level: visible, but no records
    r = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps", params={"theirs": "nope"}, headers=h
    )
    assert r.status_code == 404
    r = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps",
        params={"theirs": "secret"},
        headers=tenants.a.headers(),
    )
    assert r.status_code == 404  # hidden looks exactly like absent


def test_white_space(client, tenants, mapped):
    h = tenants.a.headers()
    ws = client.get(
        f"/v1/partnerships/{mapped}/reports/white-space", params={"limit": 1000}, headers=h
    ).json()
    assert len(ws["items"]) == 20 and all(
        i["population"] == "customers" and i["sealed"] for i in ws["items"]
    )
    # b's records 40..59 match none of a's lists; against `pipeline` only, all 40 are new
    ws2 = client.get(
        f"/v1/partnerships/{mapped}/reports/white-space",
        params={"not_in": "pipeline", "limit": 1000},
        headers=h,
    ).json()
    assert len(ws2["items"]) == 40
    # a does not share anything in full with b
    assert (
        client.get(
            f"/v1/partnerships/{mapped}/reports/white-space", headers=tenants.b.headers()
        ).json()["items"]
        == []
    )


def test_lookup_only_for_my_own_accounts(client, tenants, mapped):
    url = f"/v1/partnerships/{mapped}/lookup"
    r = client.post(
        url,
        json={"tokens": [{"value": b64(token(25))}, {"value": b64(token(5))}]},
        headers=tenants.a.headers("reader"),
    )
    assert r.status_code == 200
    res = r.json()["results"]
    assert [len(x["partner"]) for x in res] == [1, 0]
    # an account a does not hold (b's 50): refused, naming the token
    r = client.post(url, json={"tokens": [{"value": b64(token(50))}]}, headers=tenants.a.headers())
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tokens.0"
    r = client.post(url, json={"tokens": [{"value": "acme.com"}]}, headers=tenants.a.headers())
    assert r.status_code == 422


def test_withheld_when_policy_drops_a_sealed_field(client, tenants, mapped):
    _policy(
        client,
        tenants.b,
        mapped,
        {
            "default": "hidden",
            "min_count": 3,
            "min_population": 5,
            "populations": {"customers": {"share": "full", "fields": ["name"]}},
        },
    )
    items = client.get(
        f"/v1/partnerships/{mapped}/reports/overlaps", headers=tenants.a.headers()
    ).json()["items"]
    rec = items[0]["partner"][0]
    assert rec["sealed"] is None and "domain" in rec["withheld"]


def test_disclosure_log_is_chained_and_shared(client, tenants, mapped, app):
    client.get(f"/v1/partnerships/{mapped}/reports/summary", headers=tenants.a.headers())
    client.get(f"/v1/partnerships/{mapped}/reports/overlaps", headers=tenants.a.headers())
    client.get(f"/v1/partnerships/{mapped}/reports/white-space", headers=tenants.a.headers())
    log_a = client.get(
        f"/v1/partnerships/{mapped}/disclosures", headers=tenants.a.headers("reader")
    ).json()["items"]
    log_b = client.get(
        f"/v1/partnerships/{mapped}/disclosures", headers=tenants.b.headers("reader")
    ).json()["items"]
    assert log_a == log_b and [e["report"] for e in log_a] == ["summary", "overlaps", "white-space"]
    assert (
        log_a[1]["records"] == 20 and log_a[1]["viewer"] == "acme" and log_a[1]["owner"] == "globex"
    )
    assert verify_chain(log_a) == 3
    tampered = [dict(e) for e in log_a]
    tampered[1]["records"] = 1
    with pytest.raises(ChainError, match="entry 2"):
        verify_chain(tampered)
    with pytest.raises(ChainError, match="missing"):
        verify_chain([log_a[0], log_a[2]])


def test_chain_verifies_a_whole_second_timestamp_as_json_writes_it() -> None:
    """A created_at with zero microseconds is written "…:05Z" by JSON encoders; the hash
    covers "…:05.000000Z". The verifier must read both as the same instant."""
    import datetime as dt
    import uuid as uuid_mod

    from blindmap.disclosure import GENESIS, entry_hash

    at = dt.datetime(2026, 11, 23, 17, 0, 5, tzinfo=dt.UTC)
    entry = {
        "seq": 1,
        "partnership_id": str(uuid_mod.uuid4()),
        "report": "summary",
        "viewer": "acme",
        "owner": "globex",
        "records": 0,
        "created_at": at,
    }
    h = entry_hash(GENESIS, entry)
    as_json = {**entry, "created_at": "2026-11-23T17:00:05Z", "prev_hash": GENESIS, "hash": h}
    assert verify_chain([as_json]) == 1
    as_json["created_at"] = "2026-11-23T17:00:05.000001Z"
    with pytest.raises(ChainError, match="entry 1"):
        verify_chain([as_json])


def test_reveal_budget(client, tenants, mapped, app):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app
    from tests.conftest import TEST_SECRET

    tight = Settings(
        env="test",
        secret_key=TEST_SECRET,
        database_url=app.state.settings.database_url,
        reveal_budget_per_day=25,
        embedded_worker=False,
    )
    with TestClient(create_app(tight)) as c:
        url = f"/v1/partnerships/{mapped}/reports/overlaps"
        assert c.get(url, params={"limit": 20}, headers=tenants.a.headers()).status_code == 200
        r = c.get(url, params={"limit": 20}, headers=tenants.a.headers())
        assert (
            r.status_code == 429
            and int(r.headers["retry-after"]) > 0
            and "25" in r.json()["detail"]
        )
        # the owner sees the blocked release in the shared log, and the chain holds
        log = c.get(f"/v1/partnerships/{mapped}/disclosures", headers=tenants.b.headers()).json()
        assert [e["report"] for e in log["items"]][-1] == "blocked:reveal-budget"
        assert verify_chain(log["items"]) == len(log["items"])
        # b has its own budget
        assert c.get(url, params={"limit": 20}, headers=tenants.b.headers()).status_code == 200


def test_reports_need_an_active_partnership(client, tenants, mapped):
    client.post(f"/v1/partnerships/{mapped}/end", headers=tenants.b.headers())
    r = client.get(f"/v1/partnerships/{mapped}/reports/summary", headers=tenants.a.headers())
    assert r.status_code == 409
    # the disclosure log outlives the partnership
    assert (
        client.get(
            f"/v1/partnerships/{mapped}/disclosures", headers=tenants.a.headers()
        ).status_code
        == 200
    )
