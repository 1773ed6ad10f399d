"""Request ids, health checks, body limits, problem+json everywhere, logs without secrets."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app


def test_request_id_on_every_response(client, tenants):
    for method, path, headers in [
        ("GET", "/healthz", {}),
        ("GET", "/v1/me", {}),
        ("GET", "/v1/me", tenants.a.headers()),
        ("GET", "/no/such/route", {}),
    ]:
        r = client.request(method, path, headers=headers)
        assert len(r.headers["x-request-id"]) >= 16, (method, path)
    r = client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces\n"})
    assert r.headers["x-request-id"] != "bad id with spaces\n"


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_reports_an_unreachable_database():
    settings = Settings(
        env="test",
        secret_key="s" * 40,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1",
    )
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert c.get("/healthz").status_code == 200


def test_oversized_body_is_413_with_the_limit(database_url, tenants, app):
    from tests.conftest import TEST_SECRET

    small = Settings(
        env="test", secret_key=TEST_SECRET, database_url=database_url, max_body_bytes=1000
    )
    with TestClient(create_app(small)) as c:
        h = tenants.a.headers()
        r = c.post(
            "/v1/api-keys", content=b"x" * 1001, headers={**h, "content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["limit_bytes"] == 1000
        assert "1000 bytes" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(20):
                yield b" " * 100

        r = c.post(
            "/v1/api-keys", content=chunks(), headers={**h, "content-type": "application/json"}
        )
        assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
        ok = c.post("/v1/api-keys", json={"name": "fits", "role": "reader"}, headers=h)
        assert ok.status_code == 201


def test_method_not_allowed_is_problem_json(client):
    r = client.put("/v1/me")
    assert r.status_code == 405 and r.json()["status"] == 405


def test_unexpected_errors_are_problem_json_without_internals(client, app, monkeypatch):
    from service.api_key import service

    def boom(*a, **k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service, "list_keys", boom)
    # tenants are created after the patch would matter only for list_keys
    from tests.conftest import make_tenant

    t = make_tenant(app, "boom", "Boom")
    r = client.get("/v1/api-keys", headers=t.headers())
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "secret internal detail" not in r.text


def test_logs_are_json_and_never_hold_keys(client, tenants, capfd):
    logger = logging.getLogger("blindmap")
    handler = logger.handlers[0]
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(handler.format(record))

    cap = Capture()
    logger.addHandler(cap)
    try:
        client.get("/v1/me", headers=tenants.a.headers())
        client.post(
            "/v1/api-keys", json={"name": "x", "role": "reader"}, headers=tenants.a.headers()
        )
        client.get("/v1/me", headers={"Authorization": "Bearer bmk_wrong"})
    finally:
        logger.removeHandler(cap)
    import json

    parsed = [json.loads(r) for r in records]
    assert any(p.get("key_prefix") == tenants.a.keys["admin"][:12] for p in parsed)
    blob = "\n".join(records)
    for key in tenants.a.keys.values():
        assert key not in blob


def test_the_secret_trap_catches_keys_and_sample_domains() -> None:
    """Negative control for the autouse log check in conftest (issue 8 item 9)."""
    import logging

    from tests.conftest import _SecretTrap

    trap = _SecretTrap()
    log = logging.getLogger("secret-trap-test")
    log.propagate = False  # only this trap, not the autouse one, may see these records
    log.addHandler(trap)
    try:
        log.warning("key %s", "bmk_" + "A" * 30)
        log.warning("failed", extra={"website": "https://www.initech.com/"})
        log.warning("-----BEGIN PRIVATE KEY-----")
        log.warning("nothing to see: upload 42 committed")
    finally:
        log.removeHandler(trap)
    assert len(trap.hits) == 3 and any("initech.com" in h for h in trap.hits)
