"""Wire models of the HTTP API, shared by the SDK and the service.

Request bodies forbid unknown fields, so a typo is a 422 naming the field instead of
being silently ignored.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class Role(StrEnum):
    """API-key roles, weakest first; each includes what the ones before it may do."""

    reader = "reader"
    uploader = "uploader"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]


_ROLE_RANK = {Role.reader: 0, Role.uploader: 1, Role.admin: 2}

Slug = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)
]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Company(_Response):
    id: uuid.UUID
    slug: str
    display_name: str
    key_epoch: int = 0


class ApiKeyCreate(_Request):
    name: DisplayName
    role: Role


class ApiKey(_Response):
    id: uuid.UUID
    name: str
    role: Role
    prefix: str = Field(description="First characters of the key, for recognising it")
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key itself. Shown once; store it now.")


class ApiKeyPage(_Response):
    items: list[ApiKey]
    next_cursor: str | None = None


class Me(_Response):
    company: Company
    api_key: ApiKey
