"""Errors that carry their HTTP status; one handler renders them as RFC 9457 problem+json.

Domain code raises these and never `HTTPException`, so every rejection looks alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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
        # Work that must survive the rollback of the failed request (e.g. recording a
        # blocked probe where the partner can see it); run by the session dependency in
        # a transaction of its own.
        self.after_rollback: list[Callable[[Session], None]] = []

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


class FieldError(BaseModel):
    """One invalid input of a 422 (or 400) problem."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    field: str = Field(description="Dotted path of the input, e.g. 'cursor' or 'key_epochs.mine'")
    in_: str | None = Field(None, alias="in", description="body, query, path or header")
    message: str
    type: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem detail, sent as application/problem+json. Some problems add
    members (e.g. `required_role` on 403, `limit_bytes` on 413)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description=f"{TYPE_BASE}<slug>")
    title: str
    status: int
    instance: str = Field(description="The request path")
    detail: str | None = None
    errors: list[FieldError] | None = None


# Declared on every operation (the app's default `responses`); main.py documents them as
# application/problem+json. 503 is declared where it can happen (/readyz).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    cls.status: {"model": Problem, "description": cls.title}
    for cls in (
        BadRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
        RateLimited,
    )
}
