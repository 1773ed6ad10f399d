"""Errors that carry their HTTP status; one handler renders them as RFC 9457 problem+json.

Domain code raises these and never `HTTPException`, so every rejection looks alike.
"""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://blindmap.dev/problems/"


class ServiceError(Exception):
    status = 500
    title = "Internal server error"
    slug = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def problem(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "instance": instance,
        }
        if self.detail:
            body["detail"] = self.detail
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class BadRequest(ServiceError):
    status, title, slug = 400, "Bad request", "bad-request"


class Unauthenticated(ServiceError):
    status, title, slug = 401, "Authentication required", "unauthenticated"


class Forbidden(ServiceError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(ServiceError):
    status, title, slug = 404, "Not found", "not-found"


class MethodNotAllowed(ServiceError):
    status, title, slug = 405, "Method not allowed", "method-not-allowed"


class Conflict(ServiceError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(ServiceError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(ServiceError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class Unprocessable(ServiceError):
    status, title, slug = 422, "Validation failed", "validation"


class RateLimited(ServiceError):
    status, title, slug = 429, "Too many requests", "rate-limited"


class Unavailable(ServiceError):
    status, title, slug = 503, "Service unavailable", "unavailable"


BY_STATUS: dict[int, type[ServiceError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
        RateLimited,
        Unavailable,
    )
}
