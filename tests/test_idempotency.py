"""Idempotency-Key on POST (service/idempotency.py), on both databases."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

import blindmap
from service.idempotency import Idempotency, fingerprint
from service.models import ApiKey, IdempotencyKey, Population, Upload, utcnow
from tests.conftest import partner_up
from tests.uploads import manifest, ndjson, record

POP = {"slug": "customers", "kind": "customers"}


def _h(tenant, key: str, role: str = "admin") -> dict[str, str]:
    return {**tenant.headers(role), "Idempotency-Key": key}


def _count(app, model, *where) -> int:
    with app.state.sessionmaker() as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def _rows(app) -> list[IdempotencyKey]:
    with app.state.sessionmaker() as s:
        return list(s.execute(select(IdempotencyKey)).scalars())


def _middleware(app) -> Idempotency:
    node = app.middleware_stack
    while node is not None and not isinstance(node, Idempotency):
        node = getattr(node, "app", None)
    assert node is not None
    return node


def test_replay_returns_the_saved_response_without_running_again(client, tenants, app):
    first = client.post("/v1/populations", json=POP, headers=_h(tenants.a, "k-1"))
    assert first.status_code == 201, first.text
    again = client.post("/v1/populations", json=POP, headers=_h(tenants.a, "k-1"))
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert _count(app, Population, Population.company_id == tenants.a.id) == 1
    # Without the key the route runs again and says the slug exists.
    assert client.post("/v1/populations", json=POP, headers=tenants.a.headers()).status_code == 409


def test_kept_for_at_least_a_day_and_only_a_hash_of_the_request(client, tenants, app):
    client.post("/v1/populations", json=POP, headers=_h(tenants.a, "k-2"))
    (row,) = _rows(app)
    assert row.company_id == tenants.a.id and row.key == "k-2" and row.status_code == 201
    assert len(row.request_hash) == 32 and row.path == "/v1/populations"
    assert row.expires_at - row.created_at >= timedelta(hours=24)
    assert app.state.settings.idempotency_ttl_seconds >= 24 * 3600


def test_same_key_different_request_is_422_naming_the_header(client, tenants):
    assert client.post("/v1/populations", json=POP, headers=_h(tenants.a, "k")).status_code == 201
    other = {"slug": "prospects", "kind": "prospects"}
    r = client.post("/v1/populations", json=other, headers=_h(tenants.a, "k"))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["header"] == "Idempotency-Key" and "different request" in body["detail"]
    assert body["type"].endswith("/idempotency-key-reused")
    # ... and another path with the same key and body is a different request too.
    r = client.post("/v1/partnerships", json=POP, headers=_h(tenants.a, "k"))
    assert r.status_code == 422


def test_another_key_of_the_same_company_cannot_replay(client, tenants):
    assert client.post("/v1/populations", json=POP, headers=_h(tenants.a, "k")).status_code == 201
    r = client.post("/v1/populations", json=POP, headers=_h(tenants.a, "k", role="uploader"))
    assert r.status_code == 422 and "another API key" in r.json()["detail"]


def test_keys_are_scoped_per_company(client, tenants, app):
    for t in (tenants.a, tenants.b):
        r = client.post("/v1/populations", json=POP, headers=_h(t, "shared-key"))
        assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    assert _count(app, Population) == 2


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("x" * 256, "at most 255 characters (got 256)"),
        ("", "must not be empty"),
        ('""', "must not be empty"),
        ("caf\u00e9", "printable ASCII"),
        ("tab\there", "printable ASCII"),
    ],
)
def test_invalid_keys_are_422_naming_the_header(client, tenants, app, value, fragment):
    headers = {**tenants.a.headers(), "Idempotency-Key": value.encode()}
    r = client.post("/v1/populations", json=POP, headers=headers)
    assert r.status_code == 422, r.text
    body = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert "Idempotency-Key" in body["detail"] and fragment in body["detail"]
    assert body["errors"][0]["field"] == "Idempotency-Key" and body["errors"][0]["in"] == "header"
    assert _count(app, Population) == 0


def test_a_255_character_key_and_a_quoted_key_are_fine(client, tenants):
    r = client.post("/v1/populations", json=POP, headers=_h(tenants.a, "k" * 255))
    assert r.status_code == 201
    r = client.post("/v1/populations", json=POP, headers=_h(tenants.a, '"' + "k" * 255 + '"'))
    assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"


def test_without_a_valid_api_key_the_route_answers_401(client, tenants, app):
    for auth in ({}, {"Authorization": "Bearer bmk_nonsense"}):
        r = client.post("/v1/populations", json=POP, headers={**auth, "Idempotency-Key": "x"})
        assert r.status_code == 401
    assert _rows(app) == []


def test_new_api_key_is_never_kept_in_clear_and_not_replayed(client, tenants, app):
    r = client.post(
        "/v1/api-keys", json={"name": "ci", "role": "reader"}, headers=_h(tenants.a, "new-key")
    )
    assert r.status_code == 201
    created = r.json()
    (row,) = _rows(app)
    assert row.shown_once and created["key"].encode() not in (row.response_body or b"")
    again = client.post(
        "/v1/api-keys", json={"name": "ci", "role": "reader"}, headers=_h(tenants.a, "new-key")
    )
    assert again.status_code == 409
    body = again.json()
    assert body["type"].endswith("/idempotency-shown-once")
    assert body["api_key_id"] == created["id"] and body["api_key_prefix"] == created["prefix"]
    assert "shown once" in body["detail"] and created["key"] not in again.text
    # admin, uploader and reader keys, and the one created here
    assert _count(app, ApiKey, ApiKey.company_id == tenants.a.id) == 4


def test_in_flight_row_of_another_process_is_409_until_its_lock_expires(client, tenants, app):
    body = b'{"slug":"customers","kind":"customers"}'
    now = utcnow()
    with app.state.sessionmaker.begin() as s:
        s.add(
            IdempotencyKey(
                company_id=tenants.a.id,
                key="busy",
                api_key_id=tenants.a.key_ids["admin"],
                request_hash=fingerprint("POST", "/v1/populations", b"", body),
                path="/v1/populations",
                owner="another-process",
                created_at=now,
                locked_at=now,
                expires_at=now + timedelta(days=1),
            )
        )
    headers = {**_h(tenants.a, "busy"), "content-type": "application/json"}
    r = client.post("/v1/populations", content=body, headers=headers)
    assert r.status_code == 409 and r.headers["retry-after"] == "1"
    assert r.json()["type"].endswith("/idempotency-in-flight")
    assert _count(app, Population) == 0
    # That process died: after the lock time the next retry takes the key over and runs.
    lock = timedelta(seconds=app.state.settings.idempotency_lock_seconds + 1)
    with app.state.sessionmaker.begin() as s:
        s.execute(update(IdempotencyKey).values(locked_at=now - lock))
    r = client.post("/v1/populations", content=body, headers=headers)
    assert r.status_code == 201 and _count(app, Population) == 1


def test_own_row_left_in_flight_is_taken_over_at_once(client, tenants, app):
    """A request of this process that could not record its end (database down) leaves a
    row in flight; no request of ours holds it, so the retry runs."""
    client.get("/healthz")  # builds the middleware stack
    mw = _middleware(app)
    body = b'{"slug":"customers","kind":"customers"}'
    now = utcnow()
    with app.state.sessionmaker.begin() as s:
        s.add(
            IdempotencyKey(
                company_id=tenants.a.id,
                key="left-over",
                api_key_id=tenants.a.key_ids["admin"],
                request_hash=fingerprint("POST", "/v1/populations", b"", body),
                path="/v1/populations",
                owner=mw.owner,
                created_at=now,
                locked_at=now,
                expires_at=now + timedelta(days=1),
            )
        )
    headers = {**_h(tenants.a, "left-over"), "content-type": "application/json"}
    r = client.post("/v1/populations", content=body, headers=headers)
    assert r.status_code == 201
    (row,) = _rows(app)
    assert row.status_code == 201


def test_expired_keys_can_be_used_again(client, tenants, app):
    assert client.post("/v1/populations", json=POP, headers=_h(tenants.a, "old")).status_code == 201
    with app.state.sessionmaker.begin() as s:
        s.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    other = {"slug": "prospects", "kind": "prospects"}
    r = client.post("/v1/populations", json=other, headers=_h(tenants.a, "old"))
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers


def test_errors_that_did_nothing_are_not_kept(client, tenants, app):
    """4xx answers are kept (the request was decided); a retry after 5xx/429 runs again —
    here a validation 422 is replayed, while a request refused by the rate limit never
    reaches the store."""
    bad = {"slug": "customers", "kind": "nope"}
    r1 = client.post("/v1/populations", json=bad, headers=_h(tenants.a, "v"))
    r2 = client.post("/v1/populations", json=bad, headers=_h(tenants.a, "v"))
    assert r1.status_code == r2.status_code == 422 and r2.headers["idempotent-replayed"] == "true"


def test_ending_a_partnership_drops_the_responses_kept_under_it(client, tenants, app):
    pid = partner_up(client, tenants.a, tenants.b, accept=False)
    r = client.post(f"/v1/partnerships/{pid}/accept", headers=_h(tenants.b, "acc"))
    assert r.status_code == 200
    assert any(row.path.endswith("/accept") for row in _rows(app))
    r = client.post(f"/v1/partnerships/{pid}/end", headers=_h(tenants.a, "end"))
    assert r.status_code == 200, r.text
    assert [row.path for row in _rows(app)] == [f"/v1/partnerships/{pid}/end"]
    again = client.post(f"/v1/partnerships/{pid}/end", headers=_h(tenants.a, "end"))
    assert again.status_code == 200 and again.content == r.content


# -- 50 concurrent identical requests ------------------------------------------------------
def _storm(app, n: int, method: str, url: str, **kw) -> list[httpx.Response]:
    """`n` threads, each with its own TestClient (own event loop), released together."""
    barrier = threading.Barrier(n)
    out: list[httpx.Response | BaseException] = [None] * n  # type: ignore[list-item]

    def one(i: int) -> None:
        c = TestClient(app, raise_server_exceptions=False)
        barrier.wait()
        try:
            out[i] = c.request(method, url, **kw)
        except BaseException as exc:  # pragma: no cover - reported below
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors = [o for o in out if not isinstance(o, httpx.Response)]
    assert not errors, errors
    return out  # type: ignore[return-value]


def test_50_concurrent_identical_uploads_create_exactly_one(client, tenants, app):
    pid = partner_up(client, tenants.a, tenants.b)
    client.post("/v1/populations", json=POP, headers=tenants.a.headers())
    chunk = ndjson([record("r0", ["acme.com"])])
    body = manifest(client, tenants.a, pid, "customers", [chunk], 1)
    responses = _storm(
        app,
        50,
        "POST",
        f"/v1/partnerships/{pid}/uploads",
        json=body,
        headers=_h(tenants.a, str(uuid.uuid4()), role="uploader"),
    )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert created and len({r.content for r in created}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in created) == 1
    for r in responses:
        if r.status_code == 409:
            assert r.json()["type"].endswith("/idempotency-in-flight")
    assert _count(app, Upload) == 1


def test_50_concurrent_identical_key_creations_create_exactly_one(client, tenants, app):
    before = _count(app, ApiKey, ApiKey.company_id == tenants.a.id)
    responses = _storm(
        app,
        50,
        "POST",
        "/v1/api-keys",
        json={"name": "storm", "role": "reader"},
        headers=_h(tenants.a, "storm-key"),
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1 and set(statuses) == {201, 409}, statuses
    assert _count(app, ApiKey, ApiKey.company_id == tenants.a.id) == before + 1


# -- the SDK -------------------------------------------------------------------------------
def test_sdk_sends_one_key_per_post_and_reuses_it_on_retries():
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(503, headers={"Retry-After": "0"}, json={"status": 503}),
        httpx.Response(409, headers={"Retry-After": "1"}, json={"status": 409}),
        httpx.Response(201, json={"slug": "c", "kind": "customers", "display_name": None}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={"items": []})
        return answers.pop(0) if answers else httpx.Response(201, json={})

    slept: list[float] = []
    c = blindmap.Client(
        "bmk_test",
        base_url="http://escrow",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    c._sleep = slept.append  # type: ignore[method-assign]
    c.request("POST", "/v1/populations", json={"slug": "c", "kind": "customers"})
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1 and slept == [0.0, 1.0]
    uuid.UUID(keys.pop())  # a uuid4
    c.request("POST", "/v1/populations", json={}, headers={"Idempotency-Key": "mine"})
    assert seen[-1].headers.get_list("idempotency-key") == ["mine"]
    c.request("GET", "/v1/populations")
    assert "idempotency-key" not in seen[-1].headers


def test_sdk_posts_are_recorded_by_the_escrow(sdk, tenants, app):
    sdk(tenants.a).create_population("customers", kind="customers")
    (row,) = _rows(app)
    uuid.UUID(row.key)
    assert row.status_code == 201
