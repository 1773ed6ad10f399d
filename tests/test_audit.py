"""Every mutation leaves an audit event the company can read; nothing of another's."""

from __future__ import annotations

from tests.conftest import partner_up


def test_mutations_are_audited(client, tenants):
    a = tenants.a
    h = a.headers()
    client.post("/v1/api-keys", json={"name": "x", "role": "reader"}, headers=h)
    client.post("/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=h)
    client.patch("/v1/populations/customers", json={"display_name": "Clients"}, headers=h)
    pid = partner_up(client, a, tenants.b)
    client.put(f"/v1/partnerships/{pid}/policy", json={"default": "count"}, headers=h)
    client.delete("/v1/populations/customers", headers=h)
    client.post(f"/v1/partnerships/{pid}/end", headers=h)
    events = client.get("/v1/audit", headers=a.headers("reader")).json()["items"]
    actions = [e["action"] for e in events]
    for expected in (
        "api_key.create",
        "population.create",
        "population.update",
        "company.public_key",
        "partnership.invite",
        "partnership.accept",
        "policy.update",
        "population.delete",
        "partnership.end",
    ):
        assert expected in actions, expected
    assert all(
        e["actor_key_prefix"] == a.keys["admin"][:12]
        for e in events
        if e["action"] in ("population.create", "policy.update")
    )
    # newest first
    assert [e["created_at"] for e in events] == sorted(
        (e["created_at"] for e in events), reverse=True
    )


def test_audit_is_tenant_scoped_and_paginated(client, tenants):
    for i in range(5):
        client.post(
            "/v1/populations", json={"slug": f"p{i}", "kind": "other"}, headers=tenants.a.headers()
        )
    b_events = client.get("/v1/audit", headers=tenants.b.headers()).json()["items"]
    assert all(e["action"] != "population.create" for e in b_events)
    page = client.get("/v1/audit", params={"limit": 2}, headers=tenants.a.headers()).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    nxt = client.get(
        "/v1/audit", params={"limit": 2, "cursor": page["next_cursor"]}, headers=tenants.a.headers()
    ).json()
    assert not {e["id"] for e in nxt["items"]} & {e["id"] for e in page["items"]}


def test_audit_has_no_write_routes(app):
    ops = app.openapi()["paths"]["/v1/audit"]
    assert set(ops) == {"get"}
