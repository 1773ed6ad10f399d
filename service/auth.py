"""API keys: format, hashing, and the FastAPI dependencies that authenticate a request.

A key is `bmk_` + 32 base62 characters of randomness + a 6-character checksum, so a
typo or a truncated paste is refused without touching the database. Only
HMAC-SHA256(secret, key) is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
import zlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from blindmap.protocol import Role
from service import errors
from service.db import SessionDep
from service.models import ApiKey, Company, utcnow
from service.repository import Compiled

KEY_PREFIX = "bmk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 32  # 62**32 ≈ 2**190
_CHECK_LEN = 6
KEY_LEN = len(KEY_PREFIX) + _RANDOM_LEN + _CHECK_LEN
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 8
# Writing last_used_at on every request would turn each read into a write.
_LAST_USED_GRANULARITY = timedelta(seconds=60)

# One body for every authentication failure, so a caller cannot tell a revoked key
# from a made-up one.
_UNAUTHENTICATED = "A valid API key is required: send 'Authorization: Bearer <key>'."


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate_key() -> str:
    body = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return body + _checksum(body)


def well_formed(key: str) -> bool:
    if len(key) != KEY_LEN or not key.startswith(KEY_PREFIX):
        return False
    body, check = key[:-_CHECK_LEN], key[-_CHECK_LEN:]
    if any(c not in _ALPHABET for c in body[len(KEY_PREFIX) :]):
        return False
    return hmac.compare_digest(check, _checksum(body))


def hash_key(secret: bytes, key: str) -> bytes:
    return hmac.new(secret, key.encode(), hashlib.sha256).digest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]


class Principal:
    """Who is calling: the company and the key, resolved once per request. The ORM rows
    are loaded only by the routes that use them (`company`, `key`); reports need the ids
    and the role only."""

    __slots__ = ("_session", "company_id", "key_id", "prefix", "role")

    def __init__(
        self, session: Session, *, company_id: uuid.UUID, key_id: uuid.UUID, role: Role, prefix: str
    ) -> None:
        self._session = session
        self.company_id = company_id
        self.key_id = key_id
        self.role = role
        self.prefix = prefix

    @property
    def company(self) -> Company:
        return self._session.get_one(Company, self.company_id)

    @property
    def key(self) -> ApiKey:
        return self._session.get_one(ApiKey, self.key_id)


# Compiled once; one indexed read per request (revocation takes effect at once).
_KEY_BY_HASH = Compiled(
    select(ApiKey.id, ApiKey.company_id, ApiKey.role, ApiKey.prefix, ApiKey.last_used_at).where(
        ApiKey.secret_hash == bindparam("digest"), ApiKey.revoked_at.is_(None)
    )
)


# Declares the scheme in the OpenAPI document (every authenticated operation lists it);
# the header itself is parsed below so that every failure gets the same 401 body.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key of the company: `Authorization: Bearer bmk_…`",
)


def authenticate(
    request: Request,
    session: SessionDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Principal:
    _refuse_key_in_query(request)
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not well_formed(key):
        raise errors.Unauthenticated(_UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    digest = hash_key(request.app.state.settings.hmac_secret, key)
    rows = _KEY_BY_HASH.rows(session, {"digest": digest})
    if not rows:
        raise errors.Unauthenticated(_UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    key_id, company_id, role, prefix, last_used_at = rows[0]
    now = utcnow()
    if last_used_at is None or now - last_used_at > _LAST_USED_GRANULARITY:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    request.state.key_prefix = prefix  # for the access log; never the key itself
    return Principal(session, company_id=company_id, key_id=key_id, role=Role(role), prefix=prefix)


# Parameter names a client might put a key under; any well-formed key counts as well.
_KEY_PARAMS = frozenset({"api_key", "apikey", "access_token", "bearer"})


def _refuse_key_in_query(request: Request) -> None:
    """A key in the URL is refused even beside a valid header: URLs end up in access
    logs, proxies and browser history, so the client must be fixed (and the key
    rotated), not quietly served. The refusal names the parameter, never the value."""
    for name, value in request.query_params.multi_items():
        if name.lower() in _KEY_PARAMS or well_formed(value):
            raise errors.Unauthenticated(
                f"API keys are not accepted in the query string (parameter '{name}'): URLs "
                "are recorded in logs and browser history. Send 'Authorization: Bearer <key>' "
                "instead, and revoke this key if the URL may have been recorded.",
                headers={"WWW-Authenticate": "Bearer"},
                parameter=name,
            )


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """Dependency factory: the caller's key must have at least `role`. A coroutine (no
    I/O here), so that FastAPI runs it inline rather than in the thread pool."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role.rank < role.rank:
            raise errors.Forbidden(
                f"This action needs the '{role.value}' role; your key has "
                f"'{principal.role.value}'.",
                required_role=role.value,
            )
        return principal

    return dependency


ReaderKey = Annotated[Principal, Depends(require(Role.reader))]
UploaderKey = Annotated[Principal, Depends(require(Role.uploader))]
AdminKey = Annotated[Principal, Depends(require(Role.admin))]
