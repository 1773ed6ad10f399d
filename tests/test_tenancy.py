"""Tenant isolation: walk every route with company B's keys against company A's data.

Another company's object must be a 404 (never 403: existence is not confirmed) and no
listing may contain another company's data. When a route is added, add its path
parameters to ID_OF_A; test_every_route_is_walked fails until you do.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import make_tenant, partner_up
from tests.uploads import upload

# path parameter -> function(world) giving the id of one of company A's objects that
# company B has no part in
ID_OF_A = {
    "key_id": lambda w: w["tenants"].a.key_ids["reader"],
    "partnership_id": lambda w: w["partnership_a_c"],
    "slug": lambda w: "a-only",
    "upload_id": lambda w: w["upload_of_a"],
    "n": lambda w: 0,
}
SAMPLE_BODIES = {
    ("POST", "/v1/api-keys"): {"name": "probe", "role": "reader"},
    ("PUT", "/v1/partnerships/{partnership_id}/policy"): {"default": "full"},
    ("PATCH", "/v1/populations/{slug}"): {"display_name": "hijacked"},
    ("POST", "/v1/partnerships/{partnership_id}/uploads"): {
        "population": "a-only",
        "normalizer_version": "x",
        "token_kinds": ["domain"],
        "key_epochs": {"mine": 1, "partner": 1},
        "record_count": 0,
        "chunk_count": 0,
        "digest": "0" * 64,
    },
    ("POST", "/v1/partnerships/{partnership_id}/lookup"): {"tokens": [{"value": "A" * 22}]},
}


@pytest.fixture
def world(app, client, tenants):
    """A and B, plus a partnership of A with a third company C and a population only A has."""
    c = make_tenant(app, "initech", "Initech")
    pid = partner_up(client, tenants.a, c)
    r = client.post(
        "/v1/populations", json={"slug": "a-only", "kind": "customers"}, headers=tenants.a.headers()
    )
    assert r.status_code == 201
    up, _ = upload(client, tenants.a, pid, "a-only", [[1], [2]], commit=False)
    return {"tenants": tenants, "partnership_a_c": pid, "c": c, "upload_of_a": up["id"]}


def _routes(app):
    # The OpenAPI document is the public list of operations (routers nest in FastAPI).
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/v1/"):
            for method in sorted(ops):
                yield method.upper(), path


def _call(client, method, path, url, headers):
    if path.endswith("/chunks/{n}"):  # raw NDJSON, not JSON
        return client.request(
            method,
            url,
            content=b"{}\n",
            headers={**headers, "content-type": "application/x-ndjson"},
        )
    return client.request(method, url, headers=headers, json=SAMPLE_BODIES.get((method, path)))


def _params(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def test_every_route_is_walked(app):
    missing = {p for _, path in _routes(app) for p in _params(path) if p not in ID_OF_A}
    assert not missing, f"add these path parameters to ID_OF_A: {missing}"


def test_other_companies_objects_are_404(app, client, tenants, world):
    checked = 0
    for method, path in _routes(app):
        if not _params(path):
            continue
        url = path.format(**{p: ID_OF_A[p](world) for p in _params(path)})
        for role in ("admin", "uploader", "reader"):
            r = _call(client, method, path, url, tenants.b.headers(role))
            # A weaker role may be refused for its role first (403 says nothing about A).
            assert r.status_code in (404, 403), (method, url, role, r.status_code, r.text)
            if role == "admin":
                assert r.status_code == 404, (method, url, r.text)
            assert str(tenants.a.id) not in r.text
        checked += 1
    assert checked >= 1
    # nothing of A's was changed by B's attempts
    assert client.get("/v1/me", headers=tenants.a.headers("reader")).status_code == 200
    pop = client.get("/v1/populations/a-only", headers=tenants.a.headers()).json()
    assert pop["display_name"] != "hijacked"
    p = client.get(
        f"/v1/partnerships/{world['partnership_a_c']}", headers=tenants.a.headers()
    ).json()
    assert p["status"] == "active"
    policy = client.get(
        f"/v1/partnerships/{world['partnership_a_c']}/policy", headers=tenants.a.headers()
    ).json()
    assert policy["version"] == 1
    up = client.get(f"/v1/uploads/{world['upload_of_a']}", headers=tenants.a.headers()).json()
    assert up["status"] == "staged" and up["received_chunks"] == [0]


def test_listings_hold_no_foreign_data(app, client, tenants, world):
    a_markers = [str(tenants.a.id), tenants.a.slug, *(str(i) for i in tenants.a.key_ids.values())]
    a_markers += [world["partnership_a_c"], "a-only", "initech"]
    a_markers += [k[:12] for k in tenants.a.keys.values()]
    for method, path in _routes(app):
        if method != "GET" or _params(path):
            continue
        r = client.get(path, headers=tenants.b.headers("admin"))
        assert r.status_code == 200, (path, r.text)
        text = json.dumps(r.json())
        for marker in a_markers:
            assert marker not in text, (path, marker)


def test_malformed_ids_are_404_too(client, tenants):
    r = client.delete("/v1/api-keys/not-a-uuid", headers=tenants.b.headers())
    assert r.status_code in (404, 422)
    assert r.headers["content-type"] == "application/problem+json"
