"""Authentication, roles and API-key lifecycle over HTTP, on both databases."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from service import auth
from service.models import ApiKey


def test_me_returns_company_and_key(client, tenants):
    r = client.get("/v1/me", headers=tenants.a.headers("reader"))
    assert r.status_code == 200
    body = r.json()
    assert body["company"]["slug"] == "acme"
    assert body["api_key"]["role"] == "reader"
    assert body["api_key"]["prefix"] == tenants.a.keys["reader"][:12]
    assert "key" not in body["api_key"]


def test_every_authentication_failure_has_one_identical_body(client, tenants):
    revoked = tenants.a.keys["reader"]
    assert (
        client.delete(
            f"/v1/api-keys/{tenants.a.key_ids['reader']}", headers=tenants.a.headers()
        ).status_code
        == 200
    )
    valid_shape_unknown = auth.generate_key()
    bad_checksum = tenants.a.keys["admin"][:-1] + (
        "A" if tenants.a.keys["admin"][-1] != "A" else "B"
    )
    attempts = {
        "missing": {},
        "wrong scheme": {"Authorization": f"Basic {tenants.a.keys['admin']}"},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "bad checksum": {"Authorization": f"Bearer {bad_checksum}"},
        "unknown": {"Authorization": f"Bearer {valid_shape_unknown}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }
    bodies = {}
    for what, headers in attempts.items():
        r = client.get("/v1/me", headers=headers)
        assert r.status_code == 401, what
        assert r.headers["content-type"] == "application/problem+json", what
        assert r.headers["www-authenticate"] == "Bearer"
        bodies[what] = r.content
    assert len(set(bodies.values())) == 1, bodies


def test_revocation_takes_effect_on_next_request(client, tenants):
    h = tenants.a.headers("uploader")
    assert client.get("/v1/me", headers=h).status_code == 200
    r = client.delete(f"/v1/api-keys/{tenants.a.key_ids['uploader']}", headers=tenants.a.headers())
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert client.get("/v1/me", headers=h).status_code == 401
    # revoking again is harmless and keeps the first revocation time
    again = client.delete(
        f"/v1/api-keys/{tenants.a.key_ids['uploader']}", headers=tenants.a.headers()
    )
    assert again.json()["revoked_at"] == r.json()["revoked_at"]


def test_wrong_role_is_403_naming_the_role(client, tenants):
    for role in ("reader", "uploader"):
        r = client.get("/v1/api-keys", headers=tenants.a.headers(role))
        assert r.status_code == 403
        body = r.json()
        assert body["required_role"] == "admin"
        assert "'admin'" in body["detail"] and f"'{role}'" in body["detail"]


def test_create_list_revoke_key(client, tenants):
    h = tenants.a.headers()
    r = client.post("/v1/api-keys", json={"name": "nightly sync", "role": "uploader"}, headers=h)
    assert r.status_code == 201
    created = r.json()
    assert auth.well_formed(created["key"]) and created["key"].startswith(created["prefix"])
    assert (
        client.get("/v1/me", headers={"Authorization": f"Bearer {created['key']}"}).json()[
            "api_key"
        ]["role"]
        == "uploader"
    )
    listed = client.get("/v1/api-keys", headers=h).json()["items"]
    assert created["id"] in {k["id"] for k in listed}
    assert all("key" not in k for k in listed)
    client.delete(f"/v1/api-keys/{created['id']}", headers=h)
    active = {k["id"] for k in client.get("/v1/api-keys", headers=h).json()["items"]}
    assert created["id"] not in active
    everything = client.get("/v1/api-keys", params={"include_revoked": True}, headers=h).json()
    assert created["id"] in {k["id"] for k in everything["items"]}


def test_list_paginates_with_cursor(client, tenants):
    h = tenants.a.headers()
    for i in range(5):
        client.post("/v1/api-keys", json={"name": f"k{i}", "role": "reader"}, headers=h)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/api-keys", params=params, headers=h).json()
        seen += [k["id"] for k in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 8  # 3 fixture keys + 5
    bad = client.get("/v1/api-keys", params={"cursor": "garbage!"}, headers=h)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"
    too_big = client.get("/v1/api-keys", params={"limit": 5000}, headers=h)
    assert too_big.status_code == 422 and too_big.json()["errors"][0]["field"] == "limit"


def test_a_key_cannot_grant_above_its_own_role(session, tenants):
    import pytest

    from blindmap.protocol import Role
    from service import errors
    from service.api_key import service

    uploader = session.get(ApiKey, tenants.a.key_ids["uploader"])
    with pytest.raises(errors.Forbidden, match="cannot create a 'admin' key"):
        service.issue(
            session,
            company_id=tenants.a.id,
            secret=b"s" * 32,
            name="x",
            role=Role.admin,
            created_by=uploader,
        )
    session.rollback()


def _last_used(app, key_id):
    # A short session of its own: on SQLite an open transaction holds the write lock.
    with app.state.sessionmaker() as s:
        return s.get(ApiKey, key_id).last_used_at


def test_last_used_at_is_recorded_coarsely(client, tenants, app):
    key_id = tenants.a.key_ids["reader"]
    assert _last_used(app, key_id) is None
    client.get("/v1/me", headers=tenants.a.headers("reader"))
    first = _last_used(app, key_id)
    assert first is not None and first.tzinfo is not None
    client.get("/v1/me", headers=tenants.a.headers("reader"))
    assert _last_used(app, key_id) == first  # within the granularity: no write
    with app.state.sessionmaker.begin() as s:
        s.get(ApiKey, key_id).last_used_at = first - timedelta(minutes=5)
    client.get("/v1/me", headers=tenants.a.headers("reader"))
    assert _last_used(app, key_id) >= first


def test_only_the_hmac_of_a_key_is_stored(session, tenants, app):
    rows = session.execute(select(ApiKey)).scalars().all()
    secret = app.state.settings.hmac_secret
    stored = {r.secret_hash for r in rows}
    for key in tenants.a.keys.values():
        assert auth.hash_key(secret, key) in stored
        assert not any(key.encode() in (r.secret_hash or b"") for r in rows)


def test_unknown_fields_are_422_naming_them(client, tenants):
    r = client.post(
        "/v1/api-keys",
        json={"name": "x", "role": "reader", "colour": "red", "expires": 3},
        headers=tenants.a.headers(),
    )
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"colour", "expires"}
    assert "colour" in r.json()["detail"]


def test_invalid_values_are_422_naming_the_field(client, tenants):
    r = client.post("/v1/api-keys", json={"name": "", "role": "owner"}, headers=tenants.a.headers())
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"name", "role"}
    r = client.post(
        "/v1/api-keys",
        content=b"{not json",
        headers={**tenants.a.headers(), "content-type": "application/json"},
    )
    assert r.status_code == 422


def test_key_format_has_checksum():
    key = auth.generate_key()
    assert len(key) == auth.KEY_LEN and auth.well_formed(key)
    typo = key[:10] + ("x" if key[10] != "x" else "y") + key[11:]
    assert not auth.well_formed(typo)
    assert not auth.well_formed(key[:-1])
    assert len({auth.generate_key() for _ in range(200)}) == 200
