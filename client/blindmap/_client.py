"""The SDK's HTTP client: auth, retries with backoff, typed errors."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from blindmap import protocol
from blindmap._errors import APIConnectionError, APITimeoutError, BlindmapError, from_response

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3
_RETRY_STATUSES = frozenset({429, 503})
_MAX_RETRY_AFTER = 60.0


class Client:
    """A connection to a Blindmap escrow.

    `api_key` falls back to `BLINDMAP_API_KEY`, `base_url` to `BLINDMAP_URL`. Pass
    `http_client` to supply your own `httpx.Client` (tests pass the app's TestClient).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        http_client: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.api_key = api_key if api_key is not None else os.environ.get("BLINDMAP_API_KEY")
        if not self.api_key:
            raise BlindmapError(
                "no API key: pass api_key=... or set BLINDMAP_API_KEY "
                "(an admin creates one with `blindmap keys create`)"
            )
        url = base_url or os.environ.get("BLINDMAP_URL") or DEFAULT_BASE_URL
        self.base_url = url.rstrip("/")
        self.key_file = key_file
        self.max_retries = max_retries
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the key
        return f"Client(base_url={self.base_url!r})"

    # -- transport ---------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying connection errors, 429 and 503 with backoff."""
        hdrs = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        if headers:
            hdrs.update(headers)
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                resp = self._http.request(
                    method, url, json=json, params=params, content=content, headers=hdrs
                )
            except httpx.TimeoutException as exc:
                if attempt >= self.max_retries:
                    raise APITimeoutError(f"request timed out: {method} {path}") from exc
                self._sleep(self._backoff(attempt))
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise APIConnectionError(
                        f"cannot reach the escrow at {self.base_url}: {exc}"
                    ) from exc
                self._sleep(self._backoff(attempt))
            else:
                if resp.status_code in _RETRY_STATUSES and attempt < self.max_retries:
                    self._sleep(self._retry_after(resp) or self._backoff(attempt))
                elif resp.is_error:
                    raise from_response(resp)
                else:
                    return resp
            attempt += 1

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2))  # noqa: S311

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, min(float(value), _MAX_RETRY_AFTER))
        except ValueError:
            return None

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- API ---------------------------------------------------------------------------
    def me(self) -> protocol.Me:
        """The company and key this client authenticates as."""
        return protocol.Me.model_validate(self.request("GET", "/v1/me").json())

    def create_api_key(self, *, name: str, role: protocol.Role) -> protocol.ApiKeyCreated:
        """Create an API key; its plaintext is in the result and is never shown again."""
        body = protocol.ApiKeyCreate(name=name, role=role).model_dump(mode="json")
        return protocol.ApiKeyCreated.model_validate(
            self.request("POST", "/v1/api-keys", json=body).json()
        )

    def list_api_keys(self, *, include_revoked: bool = False) -> list[protocol.ApiKey]:
        """All keys of my company (newest first), following pagination."""
        out: list[protocol.ApiKey] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"include_revoked": include_revoked, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = protocol.ApiKeyPage.model_validate(
                self.request("GET", "/v1/api-keys", params=params).json()
            )
            out.extend(page.items)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    def revoke_api_key(self, key_id: str) -> protocol.ApiKey:
        """Revoke a key; it stops working on the next request."""
        return protocol.ApiKey.model_validate(
            self.request("DELETE", f"/v1/api-keys/{key_id}").json()
        )
