"""Policies over HTTP: versions, validation, the partner's transparent view."""

from __future__ import annotations

from blindmap.policy import STRICTEST_TEMPLATE, load_template
from tests.conftest import partner_up


def _pops(client, tenant, *pops):
    for slug, kind in pops:
        r = client.post(
            "/v1/populations", json={"slug": slug, "kind": kind}, headers=tenant.headers()
        )
        assert r.status_code == 201


def test_new_partnership_starts_from_the_strictest_template(client, tenants):
    pid = partner_up(client, tenants.a, tenants.b)
    for t in (tenants.a, tenants.b):
        mine = client.get(f"/v1/partnerships/{pid}/policy", headers=t.headers("reader")).json()
        assert mine["version"] == 1 and mine["owner"] == t.slug
        assert mine["document"] == load_template(STRICTEST_TEMPLATE).model_dump(mode="json")


def test_put_creates_immutable_versions(client, tenants):
    pid = partner_up(client, tenants.a, tenants.b)
    h = tenants.a.headers()
    doc = {
        "default": "hidden",
        "populations": {"customers": {"share": "overlap", "fields": ["name"]}},
    }
    r = client.put(f"/v1/partnerships/{pid}/policy", json=doc, headers=h)
    assert r.status_code == 200 and r.json()["version"] == 2
    r = client.put(f"/v1/partnerships/{pid}/policy", json={"default": "count"}, headers=h)
    assert r.json()["version"] == 3
    assert (
        client.get(f"/v1/partnerships/{pid}/policy", headers=h).json()["document"]["default"]
        == "count"
    )
    # the partner's own policy is untouched
    assert (
        client.get(f"/v1/partnerships/{pid}/policy", headers=tenants.b.headers()).json()["version"]
        == 1
    )


def test_policy_validation_and_roles(client, tenants):
    pid = partner_up(client, tenants.a, tenants.b)
    r = client.put(
        f"/v1/partnerships/{pid}/policy",
        json={"default": "count", "sharing": "all"},
        headers=tenants.a.headers(),
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "sharing"
    r = client.put(
        f"/v1/partnerships/{pid}/policy",
        json={"default": "everything"},
        headers=tenants.a.headers(),
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "default"
    r = client.put(
        f"/v1/partnerships/{pid}/policy",
        json={"default": "count"},
        headers=tenants.a.headers("uploader"),
    )
    assert r.status_code == 403


def test_partner_sees_only_what_is_shared(client, tenants):
    a, b = tenants.a, tenants.b
    _pops(
        client,
        a,
        ("customers", "customers"),
        ("secret-list", "prospects"),
        ("pipeline", "opportunities"),
    )
    pid = partner_up(client, a, b)
    doc = {
        "default": "hidden",
        "populations": {
            "customers": {"share": "overlap", "fields": ["name", "owner_email"]},
            "pipeline": {"share": "count"},
        },
        "min_count": 3,
    }
    assert (
        client.put(f"/v1/partnerships/{pid}/policy", json=doc, headers=a.headers()).status_code
        == 200
    )
    # b grants a enough for a's non-reciprocal policy not to matter
    view = client.get(f"/v1/partnerships/{pid}/partner-policy", headers=b.headers("reader")).json()
    assert view["owner"] == "acme" and view["version"] == 2 and view["min_count"] == 3
    shared = {p["slug"]: p for p in view["populations"]}
    assert set(shared) == {"customers", "pipeline"}
    assert shared["customers"]["share"] == "overlap" and shared["customers"]["fields"] == [
        "name",
        "owner_email",
    ]
    assert shared["pipeline"]["fields"] == []
    import json

    assert "secret-list" not in json.dumps(view)
    # b cannot read a's policy document or history: /policy is always the caller's own
    own = client.get(f"/v1/partnerships/{pid}/policy", headers=b.headers()).json()
    assert own["owner"] == "globex"


def test_reciprocal_policy_caps_the_partner(client, tenants):
    a, b = tenants.a, tenants.b
    _pops(client, a, ("customers", "customers"))
    pid = partner_up(client, a, b)
    client.put(
        f"/v1/partnerships/{pid}/policy",
        headers=a.headers(),
        json={
            "default": "hidden",
            "reciprocal": True,
            "populations": {"customers": {"share": "full", "fields": ["name"]}},
        },
    )
    client.put(f"/v1/partnerships/{pid}/policy", headers=b.headers(), json={"default": "count"})
    view = client.get(f"/v1/partnerships/{pid}/partner-policy", headers=b.headers()).json()
    assert [(p["slug"], p["share"], p["fields"]) for p in view["populations"]] == [
        ("customers", "count", [])
    ]
