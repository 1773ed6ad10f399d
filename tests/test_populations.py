"""Populations: a company's named lists."""

from __future__ import annotations


def test_crud(client, tenants):
    h = tenants.a.headers()
    r = client.post("/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=h)
    assert r.status_code == 201 and r.json()["display_name"] == "Customers"
    client.post(
        "/v1/populations",
        json={"slug": "open-opps", "kind": "opportunities", "display_name": "Open opportunities"},
        headers=h,
    )
    slugs = [
        p["slug"]
        for p in client.get("/v1/populations", headers=tenants.a.headers("reader")).json()["items"]
    ]
    assert slugs == ["customers", "open-opps"]
    r = client.patch("/v1/populations/open-opps", json={"display_name": "Pipeline"}, headers=h)
    assert (
        r.status_code == 200
        and r.json()["display_name"] == "Pipeline"
        and r.json()["kind"] == "opportunities"
    )
    assert client.delete("/v1/populations/open-opps", headers=h).status_code == 204
    assert client.get("/v1/populations/open-opps", headers=h).status_code == 404
    assert client.get("/v1/populations", headers=tenants.b.headers()).json()["items"] == []


def test_errors_name_the_problem(client, tenants):
    h = tenants.a.headers()
    client.post("/v1/populations", json={"slug": "customers", "kind": "customers"}, headers=h)
    dup = client.post("/v1/populations", json={"slug": "customers", "kind": "other"}, headers=h)
    assert dup.status_code == 409 and "customers" in dup.json()["detail"]
    bad = client.post("/v1/populations", json={"slug": "Bad Slug", "kind": "friends"}, headers=h)
    assert bad.status_code == 422 and {e["field"] for e in bad.json()["errors"]} == {"slug", "kind"}
    assert (
        client.post(
            "/v1/populations",
            json={"slug": "x", "kind": "other"},
            headers=tenants.a.headers("uploader"),
        ).status_code
        == 403
    )
    # the same slug in another company is a different population
    assert (
        client.post(
            "/v1/populations",
            json={"slug": "customers", "kind": "customers"},
            headers=tenants.b.headers(),
        ).status_code
        == 201
    )
