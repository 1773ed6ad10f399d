"""Exceptions raised by the SDK, one class per HTTP status family (after httpx/openai)."""

from __future__ import annotations

from typing import Any

import httpx


class BlindmapError(Exception):
    """Base of every error the SDK raises on purpose."""


class APIError(BlindmapError):
    """The escrow could not be reached, or answered with an error."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """No usable HTTP response (refused, reset, DNS, TLS...)."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(APIError):
    """The escrow answered 4xx/5xx; `problem` is its RFC 9457 body."""

    status_code: int

    def __init__(self, response: httpx.Response, problem: dict[str, Any]) -> None:
        self.response = response
        self.status_code = response.status_code
        self.problem = problem
        self.title: str = str(problem.get("title") or response.reason_phrase)
        self.detail: str | None = problem.get("detail")
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        self.request_id: str | None = response.headers.get("x-request-id")
        msg = f"{self.status_code} {self.title}"
        if self.detail:
            msg += f": {self.detail}"
        for err in self.errors:
            msg += f"\n  - {err.get('field', '?')}: {err.get('message', '')}"
        if self.request_id:
            msg += f" (request id {self.request_id})"
        super().__init__(msg, request=response.request)


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class ConflictError(APIStatusError):
    status_code = 409


class PayloadTooLargeError(APIStatusError):
    status_code = 413


class ValidationError(APIStatusError):
    status_code = 422


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    """5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: BadRequestError,
    422: ValidationError,
    429: RateLimitError,
}


def from_response(response: httpx.Response) -> APIStatusError:
    """Build the exception for an error response, keeping its problem document."""
    try:
        body = response.json()
        problem = body if isinstance(body, dict) else {"detail": str(body)}
    except ValueError:
        problem = {"detail": response.text[:500] or None}
    status = response.status_code
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(response, problem)
