"""Contract tests: the real SDK against the real app in-process, plus transport faults."""

from __future__ import annotations

import httpx
import pytest

import blindmap
from blindmap import protocol


def test_public_surface_is_explicit():
    assert set(blindmap.__all__) == {
        "Client",
        "__version__",
        "BlindmapError",
        "APIError",
        "APIConnectionError",
        "APITimeoutError",
        "APIStatusError",
        "AuthenticationError",
        "PermissionDeniedError",
        "NotFoundError",
        "ConflictError",
        "PayloadTooLargeError",
        "ValidationError",
        "RateLimitError",
        "InternalServerError",
    }
    for name in blindmap.__all__:
        assert getattr(blindmap, name) is not None


def test_me_and_key_lifecycle(sdk, tenants):
    admin = sdk(tenants.a)
    me = admin.me()
    assert me.company.slug == "acme" and me.api_key.role is protocol.Role.admin
    created = admin.create_api_key(name="rep", role=protocol.Role.reader)
    assert created.key.startswith(created.prefix)
    assert created.id in {k.id for k in admin.list_api_keys()}
    admin.revoke_api_key(str(created.id))
    assert created.id not in {k.id for k in admin.list_api_keys()}
    assert created.id in {k.id for k in admin.list_api_keys(include_revoked=True)}


def test_typed_errors_carry_status_detail_and_request_id(sdk, tenants, client):
    with pytest.raises(blindmap.PermissionDeniedError) as exc:
        sdk(tenants.a, "reader").list_api_keys()
    assert exc.value.status_code == 403 and "admin" in exc.value.detail
    assert exc.value.request_id
    with pytest.raises(blindmap.NotFoundError):
        sdk(tenants.b).revoke_api_key(str(tenants.a.key_ids["reader"]))
    bad = blindmap.Client("bmk_" + "x" * 38, base_url="http://testserver", http_client=client)
    with pytest.raises(blindmap.AuthenticationError) as exc:
        bad.me()
    assert exc.value.status_code == 401


def test_validation_error_names_fields(sdk, tenants):
    with pytest.raises(blindmap.ValidationError) as exc:
        sdk(tenants.a).request("POST", "/v1/api-keys", json={"name": "x", "role": "x", "zzz": 1})
    assert {e["field"] for e in exc.value.errors} == {"role", "zzz"}
    assert "zzz" in str(exc.value)


def test_env_fallbacks(monkeypatch):
    monkeypatch.setenv("BLINDMAP_API_KEY", "bmk_from_env")
    monkeypatch.setenv("BLINDMAP_URL", "https://escrow.example:9000/")
    c = blindmap.Client()
    assert c.api_key == "bmk_from_env" and c.base_url == "https://escrow.example:9000"
    assert "bmk_from_env" not in repr(c)
    monkeypatch.delenv("BLINDMAP_API_KEY")
    with pytest.raises(blindmap.BlindmapError, match="BLINDMAP_API_KEY"):
        blindmap.Client()


class _NoSleep(blindmap.Client):
    slept: list[float]

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def _client(handler, **kw):
    c = _NoSleep(
        "bmk_test",
        base_url="http://escrow",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        **kw,
    )
    c.slept = []
    return c


ME = {
    "company": {"id": "00000000-0000-0000-0000-000000000001", "slug": "a", "display_name": "A"},
    "api_key": {
        "id": "00000000-0000-0000-0000-000000000002",
        "name": "k",
        "role": "admin",
        "prefix": "bmk_x",
        "created_at": "2026-01-01T00:00:00Z",
    },
}


def test_retries_connection_errors_then_succeeds():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=ME)

    c = _client(handler)
    assert c.me().company.slug == "a"
    assert len(calls) == 3 and len(c.slept) == 2
    assert calls[0].headers["authorization"] == "Bearer bmk_test"


def test_gives_up_with_api_connection_error():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    c = _client(handler, max_retries=2)
    with pytest.raises(blindmap.APIConnectionError, match="cannot reach"):
        c.me()
    assert len(c.slept) == 2


def test_honours_retry_after_on_429_and_503():
    answers = [
        httpx.Response(
            429, headers={"Retry-After": "7"}, json={"title": "Too many requests", "status": 429}
        ),
        httpx.Response(
            503, headers={"Retry-After": "2"}, json={"title": "Unavailable", "status": 503}
        ),
        httpx.Response(200, json=ME),
    ]
    c = _client(lambda request: answers.pop(0))
    c.me()
    assert c.slept == [7.0, 2.0]


def test_rate_limit_error_after_retries():
    c = _client(
        lambda r: httpx.Response(
            429,
            headers={"Retry-After": "1", "X-Request-ID": "abc"},
            json={"title": "Too many requests", "status": 429, "detail": "slow down"},
        ),
        max_retries=1,
    )
    with pytest.raises(blindmap.RateLimitError) as exc:
        c.me()
    assert exc.value.request_id == "abc" and exc.value.detail == "slow down"


def test_timeouts_are_typed():
    def handler(request):
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(blindmap.APITimeoutError):
        _client(handler, max_retries=0).me()


def test_non_json_error_body_still_raises_typed_error():
    c = _client(lambda r: httpx.Response(502, text="<html>bad gateway</html>"), max_retries=0)
    with pytest.raises(blindmap.InternalServerError) as exc:
        c.me()
    assert exc.value.status_code == 502 and "bad gateway" in exc.value.detail


def test_a_long_retry_after_is_raised_at_once():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(
            429, headers={"Retry-After": "3600"}, json={"title": "Too many requests", "status": 429}
        )

    c = _client(handler)
    with pytest.raises(blindmap.RateLimitError):
        c.me()
    assert len(calls) == 1 and c.slept == []


def test_a_sent_chunk_body_is_freed_without_waiting_for_the_collector():
    """httpx's response and its stream refer to each other and the response holds the
    request: the SDK ends that cycle, so a chunk body dies with its last reference, not
    at the next full collection (which a process holding a million accounts rarely
    runs: a 1M sync kept ≈ 250 MB of sent bodies until then)."""
    import gc
    import sys
    import uuid

    def handler(request: httpx.Request) -> httpx.Response:
        receipt = {"upload_id": str(uuid.uuid4()), "n": 0, "records": 1, "sha256": "0" * 64}
        return httpx.Response(200, json=receipt)

    c = _client(handler)
    body = bytes(1000)
    was = gc.isenabled()
    gc.disable()
    try:
        held = sys.getrefcount(body)
        for _ in range(3):
            c.put_chunk(uuid.uuid4(), 0, body, content_type=protocol.BINARY_CHUNK)
        assert sys.getrefcount(body) == held
    finally:
        if was:
            gc.enable()
